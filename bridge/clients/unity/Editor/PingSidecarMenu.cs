// Editor check that the sidecar answers: Tools > Narrative > Ping Sidecar.

using System;
using System.Linq;
using Narrative.Sidecar.Unity;
using UnityEditor;
using UnityEngine;

namespace Narrative.Sidecar.Editor
{
    public static class PingSidecarMenu
    {
        const string EndpointPref = "Narrative.Sidecar.Endpoint";

        /// <summary>Connects to the endpoint of the scene's NarrativeSidecar (or the last one used; default
        /// tcp://127.0.0.1:5555), says hello, pings, and shows what the sidecar serves. Blocks the editor at most ~5 s.</summary>
        [MenuItem("Tools/Narrative/Ping Sidecar")]
        public static void Ping()
        {
            var inScene = UnityEngine.Object.FindObjectOfType<NarrativeSidecar>();
            string endpoint = inScene != null ? inScene.Endpoint : EditorPrefs.GetString(EndpointPref, "tcp://127.0.0.1:5555");
            EditorPrefs.SetString(EndpointPref, endpoint);
            var options = new SidecarClientOptions
            {
                Endpoint = endpoint, ClientName = "unity-editor", AutoReconnect = false,
                ConnectTimeout = TimeSpan.FromSeconds(3), RequestTimeout = TimeSpan.FromSeconds(2),
            };
            try
            {
                using (var client = new SidecarClient(options))
                {
                    Ready ready = client.Connect();
                    double rtt = client.PingAsync().GetAwaiter().GetResult();
                    string models = string.Join(", ", ready.Models.Select(kv => kv.Key + ": " + kv.Value).ToArray());
                    string text = string.Format("{0} answers at {1}\nping {2:0.0} ms\n\nmodels: {3}\nNPCs: {4}\nmax_frame_bytes: {5}",
                        ready.Server, endpoint, rtt, models, string.Join(", ", ready.Npcs.ToArray()), ready.MaxFrameBytes);
                    Debug.Log("[narrative] " + text.Replace("\n", "; "));
                    EditorUtility.DisplayDialog("Narrative sidecar", text, "OK");
                }
            }
            catch (Exception e)
            {
                string text = string.Format("No answer from {0}:\n{1}\n\nStart it with `narrative serve` (it prints the endpoint).", endpoint, e.Message);
                Debug.LogWarning("[narrative] " + text.Replace("\n", " "));
                EditorUtility.DisplayDialog("Narrative sidecar", text, "OK");
            }
        }
    }
}
