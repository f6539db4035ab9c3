// The Unity layer: a component that owns the sidecar connection and runs every callback on Unity's main thread.

using System;
using System.Collections.Generic;
using System.Threading.Tasks;
using UnityEngine;

namespace Narrative.Sidecar.Unity
{
    /// <summary>Owns one <see cref="SidecarClient"/> (one connection, one reader thread) and dispatches its callbacks
    /// on the main thread: they are queued by the reader thread and run in <c>Update</c>. Put one in the scene; the
    /// <see cref="NpcDialogue"/> components find it. The connection reconnects by itself when the sidecar restarts.</summary>
    [AddComponentMenu("Narrative/Narrative Sidecar")]
    [DisallowMultipleComponent]
    public sealed class NarrativeSidecar : MonoBehaviour
    {
        [Tooltip("The sidecar's endpoint, as `narrative serve` prints it.")]
        [SerializeField] string endpoint = "tcp://127.0.0.1:5555";
        [Tooltip("Sent in hello, for the sidecar's logs.")]
        [SerializeField] string clientName = "unity";
        [Tooltip("Seconds to wait for a reply (ping, reset, lore queries).")]
        [SerializeField] float requestTimeoutSeconds = 30f;
        [Tooltip("Seconds to wait for the first (and each next) chunk of a line.")]
        [SerializeField] float streamTimeoutSeconds = 120f;
        [SerializeField] bool connectOnStart = true;
        [SerializeField] bool dontDestroyOnLoad = true;
        [Tooltip("Log connects, drops and errors to the Unity console.")]
        [SerializeField] bool logToConsole = true;

        readonly object _queueLock = new object();
        List<Action> _queue = new List<Action>();
        List<Action> _running = new List<Action>();
        SidecarClient _client;

        /// <summary>The first NarrativeSidecar that woke up (what NpcDialogue uses when none is assigned).</summary>
        public static NarrativeSidecar Instance { get; private set; }

        /// <summary>The engine-agnostic client (for the Task API: awaiting it on the main thread resumes on the main
        /// thread through Unity's SynchronizationContext). Its own events run on the reader thread.</summary>
        public SidecarClient Client { get { return _client; } }

        public string Endpoint { get { return endpoint; } set { endpoint = value; } }
        public bool IsConnected { get { return _client != null && _client.IsConnected; } }
        /// <summary>The last ready (NPC ids, limits), or null before the first connection.</summary>
        public Ready Ready { get { return _client != null ? _client.Ready : null; } }

        /// <summary>Main thread: connected (first time and after every reconnect).</summary>
        public event Action<Ready> Connected;
        /// <summary>Main thread: the connection dropped; lines in progress have failed with SidecarDisconnectedException.</summary>
        public event Action<string> Disconnected;
        /// <summary>Main thread: lore.changed / lore.error pushed by the sidecar, or a message type this client does not know.</summary>
        public event Action<Message> EventReceived;
        /// <summary>Main thread: errors no request owns, and failures of Connect.</summary>
        public event Action<SidecarException> Error;

        void Awake()
        {
            if (Instance == null) Instance = this;
            if (dontDestroyOnLoad) DontDestroyOnLoad(gameObject);
            EnsureClient();
        }

        void Start()
        {
            if (connectOnStart) Connect();
        }

        void EnsureClient()
        {
            if (_client != null) return;
            var options = new SidecarClientOptions
            {
                Endpoint = endpoint,
                ClientName = clientName,
                RequestTimeout = TimeSpan.FromSeconds(requestTimeoutSeconds),
                StreamTimeout = TimeSpan.FromSeconds(streamTimeoutSeconds),
            };
            if (logToConsole) options.Log = s => Post(() => Debug.Log("[narrative] " + s));
            _client = new SidecarClient(options);
            _client.Connected += r => Post(() => { if (Connected != null) Connected(r); });
            _client.Disconnected += why => Post(() => { if (Disconnected != null) Disconnected(why); });
            _client.EventReceived += m => Post(() => { if (EventReceived != null) EventReceived(m); });
            _client.UnroutedError += e => Post(() => RaiseError(e));
        }

        /// <summary>Connects (the client also connects by itself on the first request). onReady runs on the main thread;
        /// a failure goes to onError, or the Error event. The client keeps retrying in the background either way.</summary>
        public void Connect(Action<Ready> onReady = null, Action<SidecarException> onError = null)
        {
            EnsureClient();
            Deliver(_client.ConnectAsync(), onReady, onError);
        }

        /// <summary>Queues an action for the main thread (safe from any thread).</summary>
        public void Post(Action action)
        {
            lock (_queueLock) _queue.Add(action);
        }

        void Update()
        {
            lock (_queueLock)
            {
                var swap = _running; _running = _queue; _queue = swap;
            }
            for (int i = 0; i < _running.Count; i++)
            {
                try { _running[i](); }
                catch (Exception e) { Debug.LogException(e, this); }
            }
            _running.Clear();
        }

        void OnDestroy()
        {
            if (Instance == this) Instance = null;
            if (_client != null) { _client.Dispose(); _client = null; }
        }

        void OnApplicationQuit()
        {
            if (_client != null) { _client.Dispose(); _client = null; }
        }

        void RaiseError(SidecarException e)
        {
            if (Error != null) Error(e);
            else if (logToConsole) Debug.LogWarning("[narrative] " + e.Message);
        }

        /// <summary>Runs a task's outcome on the main thread.</summary>
        public void Deliver<T>(Task<T> task, Action<T> onOk, Action<SidecarException> onError)
        {
            task.ContinueWith(t =>
            {
                if (t.IsFaulted)
                {
                    var e = t.Exception.InnerException as SidecarException
                            ?? new SidecarProtocolException(t.Exception.InnerException.Message, "", t.Exception.InnerException);
                    Post(() => { if (onError != null) onError(e); else RaiseError(e); });
                }
                else if (onOk != null) { var r = t.Result; Post(() => onOk(r)); }
            }, TaskContinuationOptions.ExecuteSynchronously);
        }

        // ---- the client's API with main-thread callbacks ---------------------------------------------------------

        /// <summary>Streams an NPC's line; every callback runs on the main thread (chunks in seq order, then the NPC's actions
        /// when it has a declaration, then onDone or onError).</summary>
        public SayStream Say(string npc, string text, SayOptions options, Action<Chunk> onChunk, Action<Done> onDone, Action<SidecarException> onError,
                             Action<NpcAction> onAction = null)
        {
            EnsureClient();
            return _client.Say(npc, text, options,
                onChunk == null ? (Action<Chunk>)null : c => Post(() => onChunk(c)),
                onDone == null ? (Action<Done>)null : d => Post(() => onDone(d)),
                e => Post(() => { if (onError != null) onError(e); else RaiseError(e); }),
                onAction == null ? (Action<NpcAction>)null : a => Post(() => onAction(a)));
        }

        /// <summary>Tells NPCs that something happened (at most one target of npc, npcs, location, faction; none: every NPC);
        /// onReached gets how many NPCs it reached, on the main thread.</summary>
        public void SendEvent(string text, string session = null, string npc = null, IList<string> npcs = null, string location = null,
                              string faction = null, IDictionary<string, object> state = null, Action<long> onReached = null,
                              Action<SidecarException> onError = null)
        {
            EnsureClient();
            Deliver(_client.EventAsync(text, session, npc, npcs, location, faction, state), onReached, onError);
        }

        /// <summary>Merges game state (key -> bool, int, float or string) into the session's, then removes the unset keys.</summary>
        public void SetState(IDictionary<string, object> values, IList<string> unset = null, string session = null, Action onOk = null,
                             Action<SidecarException> onError = null)
        {
            EnsureClient();
            Deliver(Finished(_client.SetStateAsync(values, unset, session)), _ => { if (onOk != null) onOk(); }, onError);
        }

        /// <summary>Declares the actions and per-line fields of npc (null: every NPC) in session; declare before the first line.</summary>
        public void Declare(IList<ActionSpec> actions, IDictionary<string, FieldSpec> fields = null, int maxActions = 1, string npc = null,
                            string session = null, Action onOk = null, Action<SidecarException> onError = null)
        {
            EnsureClient();
            Deliver(Finished(_client.DeclareAsync(actions, fields, maxActions, npc, session)), _ => { if (onOk != null) onOk(); }, onError);
        }

        static Task<bool> Finished(Task t)
        {
            return t.ContinueWith(x => { if (x.IsFaulted) throw x.Exception.InnerException; return true; });
        }

        /// <summary>Stops a line in progress (it ends with onDone, FinishReason "cancelled").</summary>
        public void Cancel(SayStream stream)
        {
            if (stream != null && _client != null) _client.Cancel(stream.RequestId, e => Post(() => RaiseError(e)));
        }

        /// <summary>Round trip in ms, on the main thread.</summary>
        public void Ping(Action<double> onPong, Action<SidecarException> onError = null)
        {
            EnsureClient();
            Deliver(_client.PingAsync(), onPong, onError);
        }

        /// <summary>Forgets one conversation (session null: this connection's).</summary>
        public void ResetConversation(string npc, string session, Action onOk = null, Action<SidecarException> onError = null)
        {
            EnsureClient();
            Deliver(Finished(_client.ResetAsync(npc, session)), _ => { if (onOk != null) onOk(); }, onError);
        }

        public void LoreQuery(string text, string npc, Action<LoreResult> onResult, Action<SidecarException> onError = null)
        {
            EnsureClient();
            Deliver(_client.LoreQueryAsync(text, npc), onResult, onError);
        }

        public void Generate(string quest, long? seed, Action<GenerateResult> onResult, Action<SidecarException> onError = null)
        {
            EnsureClient();
            Deliver(_client.GenerateAsync(quest, null, seed), onResult, onError);
        }
    }
}
