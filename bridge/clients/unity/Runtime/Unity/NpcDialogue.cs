// One NPC the player can talk to: streams its lines through the scene's NarrativeSidecar, on the main thread.

using System;
using System.Collections.Generic;
using UnityEngine;

namespace Narrative.Sidecar.Unity
{
    /// <summary>Put on an NPC. <see cref="Say"/> sends the player's line; <see cref="ChunkReceived"/> fires as the NPC's
    /// line streams in (with the text so far), then <see cref="ActionReceived"/> for each action the NPC takes (when its
    /// actions are declared: NarrativeSidecar.Declare), then <see cref="LineFinished"/> (the done's Fields hold the declared
    /// per-line fields) or <see cref="LineFailed"/>. All events run on the main thread, so they may touch UI directly.
    /// A new line interrupts the one in progress.</summary>
    [AddComponentMenu("Narrative/NPC Dialogue")]
    public sealed class NpcDialogue : MonoBehaviour
    {
        [Tooltip("The sidecar connection; empty: NarrativeSidecar.Instance.")]
        [SerializeField] NarrativeSidecar sidecar;
        [Tooltip("The NPC's entry id in the lore files (ready.npcs lists them), e.g. odile-brask.")]
        [SerializeField] string npcId = "odile-brask";
        [Tooltip("Conversation key kept across connections (e.g. a save-game id); empty: this connection.")]
        [SerializeField] string session = "";
        [Tooltip("Upper bound on the tokens of one line (1..4096).")]
        [SerializeField] int maxTokens = 128;

        SayStream _current;

        /// <summary>(the new chunk, the line so far).</summary>
        public event Action<Chunk, string> ChunkReceived;
        /// <summary>An action the NPC takes at the end of its line: a declared name, arguments valid for its schema.</summary>
        public event Action<NpcAction> ActionReceived;
        public event Action<Done> LineFinished;
        public event Action<SidecarException> LineFailed;

        public string NpcId { get { return npcId; } set { npcId = value; } }
        public string Session { get { return session; } set { session = value; } }
        /// <summary>The line so far (the whole line once finished).</summary>
        public string CurrentLine { get; private set; }
        public bool IsSpeaking { get { return _current != null && !_current.IsFinished; } }

        NarrativeSidecar Sidecar
        {
            get
            {
                if (sidecar == null) sidecar = NarrativeSidecar.Instance;
                if (sidecar == null) throw new InvalidOperationException("NpcDialogue needs a NarrativeSidecar in the scene");
                return sidecar;
            }
        }

        /// <summary>Sends the player's line (as data: never interpreted) and streams the NPC's answer. state: game state merged
        /// into the session's first (key -> bool, int, float or string), or null.</summary>
        public void Say(string playerLine, IDictionary<string, object> state = null)
        {
            Interrupt();
            CurrentLine = "";
            SayStream stream = null;
            var options = new SayOptions { Session = string.IsNullOrEmpty(session) ? null : session, MaxTokens = maxTokens, State = state };
            stream = Sidecar.Say(npcId, playerLine, options,
                chunk =>
                {
                    if (stream != _current) return;  // a line we interrupted
                    CurrentLine += chunk.Text;
                    if (ChunkReceived != null) ChunkReceived(chunk, CurrentLine);
                },
                done =>
                {
                    if (stream != _current) return;
                    CurrentLine = done.Text;
                    if (LineFinished != null) LineFinished(done);
                },
                error =>
                {
                    if (stream != _current) return;
                    if (LineFailed != null) LineFailed(error);
                    else Debug.LogWarning("[narrative] " + npcId + ": " + error.Message, this);
                },
                action =>
                {
                    if (stream != _current) return;
                    if (ActionReceived != null) ActionReceived(action);
                });
            _current = stream;
        }

        /// <summary>Stops the line in progress, if any.</summary>
        public void Interrupt()
        {
            if (IsSpeaking) Sidecar.Cancel(_current);
            _current = null;
        }

        /// <summary>Forgets this NPC's conversation history in the sidecar.</summary>
        public void ResetConversation(Action onOk = null)
        {
            Interrupt();
            Sidecar.ResetConversation(npcId, string.IsNullOrEmpty(session) ? null : session, onOk);
        }

        void OnDisable() { Interrupt(); }
    }
}
