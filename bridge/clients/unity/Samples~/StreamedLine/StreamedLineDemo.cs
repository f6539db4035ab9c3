// Sample: an NPC's line streamed into a UI Text as it arrives.
//
// Add this component to an empty GameObject in an empty scene and press Play (with `narrative serve` running).
// It creates what it needs when nothing is assigned: a NarrativeSidecar, an NpcDialogue, a Canvas and a Text.
// Space (or the component's context menu "Say the line") sends the player line again.

using Narrative.Sidecar;
using Narrative.Sidecar.Unity;
using UnityEngine;
using UnityEngine.UI;

namespace Narrative.Sidecar.Samples
{
    public sealed class StreamedLineDemo : MonoBehaviour
    {
        [SerializeField] NpcDialogue npc;
        [SerializeField] Text output;
        [SerializeField] string npcId = "odile-brask";
        [TextArea] [SerializeField] string playerLine = "Any news from the docks?";

        void Start()
        {
            if (NarrativeSidecar.Instance == null) new GameObject("Narrative Sidecar").AddComponent<NarrativeSidecar>();
            if (npc == null) { npc = gameObject.AddComponent<NpcDialogue>(); npc.NpcId = npcId; }
            if (output == null) output = MakeText();

            npc.ChunkReceived += (chunk, soFar) => output.text = soFar;            // main thread: safe to touch UI
            npc.LineFinished += done => output.text = string.Format("{0}\n\n<size=14>({1}, first token after {2:0} ms)</size>",
                done.Text, done.FinishReason, done.Timings.ContainsKey("ttft_ms") ? done.Timings["ttft_ms"] : 0);
            npc.LineFailed += error => output.text = "<color=red>" + error.CodeName + "</color>: " + error.Detail;

            output.text = "(connecting...)";
            NarrativeSidecar.Instance.Connect(ready => SayTheLine(), error => output.text = "<color=red>" + error.Message + "</color>");
        }

        void Update()
        {
            if (Input.GetKeyDown(KeyCode.Space)) SayTheLine();
        }

        [ContextMenu("Say the line")]
        public void SayTheLine()
        {
            output.text = "";
            npc.Say(playerLine);
        }

        Text MakeText()
        {
            var canvasGo = new GameObject("Canvas", typeof(Canvas), typeof(CanvasScaler), typeof(GraphicRaycaster));
            canvasGo.GetComponent<Canvas>().renderMode = RenderMode.ScreenSpaceOverlay;
            var textGo = new GameObject("NPC line", typeof(RectTransform), typeof(Text));
            textGo.transform.SetParent(canvasGo.transform, false);
            var rect = textGo.GetComponent<RectTransform>();
            rect.anchorMin = new Vector2(0.1f, 0.1f);
            rect.anchorMax = new Vector2(0.9f, 0.5f);
            rect.offsetMin = rect.offsetMax = Vector2.zero;
            var text = textGo.GetComponent<Text>();
            text.font = Resources.GetBuiltinResource<Font>("LegacyRuntime.ttf");  // "Arial.ttf" before Unity 2022.2
            text.fontSize = 24;
            text.color = Color.white;
            text.alignment = TextAnchor.UpperLeft;
            text.supportRichText = true;
            return text;
        }
    }
}
