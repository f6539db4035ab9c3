// A console client for the sidecar built on the package's engine-agnostic core (Unity ignores this Tools~ folder).
//
// Build (Mono):  mcs -langversion:7.2 -r:System.Core.dll -out:SidecarConsole.exe Runtime/Core/*.cs Tools~/SidecarConsole.cs
//   mono SidecarConsole.exe chat       tcp://127.0.0.1:5555 odile-brask       player lines from stdin, the NPC's streamed back
//   mono SidecarConsole.exe transcript tcp://127.0.0.1:5555 odile-brask "line 1" "line 2"   chunks with ms since the send
//   mono SidecarConsole.exe bench      tcp://127.0.0.1:5555                   benchmarks/client_overhead.py drives this over stdin

using System;
using System.Diagnostics;
using System.Globalization;
using System.Linq;
using System.Threading;
using Narrative.Sidecar;

static class SidecarConsole
{
    static int Main(string[] args)
    {
        if (args.Length < 2)
        {
            Console.Error.WriteLine("usage: SidecarConsole.exe chat|transcript|bench <endpoint> [npc] [lines...]");
            return 2;
        }
        string mode = args[0], endpoint = args[1], npc = args.Length > 2 ? args[2] : "odile-brask";
        var client = new SidecarClient(new SidecarClientOptions { Endpoint = endpoint, ClientName = "csharp-console" });
        try
        {
            switch (mode)
            {
                case "chat": Chat(client, npc); break;
                case "transcript": Transcript(client, npc, args.Skip(3).ToArray()); break;
                case "bench": Bench(client); break;
                default: Console.Error.WriteLine("unknown mode " + mode); return 2;
            }
            return 0;
        }
        catch (Exception e)
        {
            var se = (e is AggregateException ? e.InnerException : e) as SidecarException;
            Console.Error.WriteLine(se != null ? se.CodeName + ": " + se.Detail : e.ToString());
            return 1;
        }
        finally { client.Dispose(); }
    }

    static double Ms(long t0) { return (Stopwatch.GetTimestamp() - t0) * 1000.0 / Stopwatch.Frequency; }

    static void Chat(SidecarClient c, string npc)
    {
        Ready r = c.Connect();
        Console.WriteLine("connected to {0} ({1}); NPCs: {2}. Type a line, empty line to quit.", c.Options.Endpoint, r.Server, string.Join(", ", r.Npcs));
        string session = "console-" + Guid.NewGuid().ToString("N").Substring(0, 8);
        string line;
        while (!string.IsNullOrEmpty(line = Console.ReadLine()))
        {
            Done d = c.SayAsync(npc, line, new SayOptions { Session = session }, ch => Console.Write(ch.Text)).GetAwaiter().GetResult();
            Console.WriteLine("\n  [{0}, ttft {1} ms, {2} tokens/s]", d.FinishReason, d.Timings["ttft_ms"], d.Timings["tokens_per_s"]);
        }
    }

    /// <summary>Prints a Markdown transcript: every chunk with the ms since the say was sent (client clock).</summary>
    static void Transcript(SidecarClient c, string npc, string[] lines)
    {
        if (lines.Length == 0) lines = new[] { "Good evening. What is the Cracked Bellows famous for?", "And who is Pell Sedgewick?" };
        long t0 = Stopwatch.GetTimestamp();
        Ready r = c.Connect();
        Console.WriteLine("connect + hello -> ready: {0:0.0} ms; server {1}; model {2}; NPCs {3}; limits {4}", Ms(t0), r.Server,
            r.Models.ContainsKey("dialogue") ? r.Models["dialogue"] : "?", string.Join(", ", r.Npcs),
            string.Join(", ", r.Limits.Select(kv => kv.Key + "=" + kv.Value)));
        t0 = Stopwatch.GetTimestamp();
        double rtt = c.PingAsync().GetAwaiter().GetResult();
        Console.WriteLine("ping -> pong: {0:0.0} ms", rtt);
        string session = "transcript-" + Guid.NewGuid().ToString("N").Substring(0, 8);
        foreach (var line in lines)
        {
            Console.WriteLine();
            Console.WriteLine("player -> {0}: \"{1}\"  (session {2}, max_tokens 32, seed 1)", npc, line, session);
            long sent = Stopwatch.GetTimestamp();
            var stream = c.Say(npc, line, new SayOptions { Session = session, MaxTokens = 32, Seed = 1 },
                ch => Console.WriteLine("  {0,8:0.0} ms  chunk {1,2}  \"{2}\"", Ms(sent), ch.Seq, ch.Text.Replace("\n", "\\n")));
            Done d = stream.Completion.GetAwaiter().GetResult();
            Console.WriteLine("  {0,8:0.0} ms  done     finish_reason={1} tokens(prompt={2}, cached={3}, completion={4}) server ttft={5} ms total={6} ms {7} tok/s",
                Ms(sent), d.FinishReason, d.Tokens["prompt"], d.Tokens["cached"], d.Tokens["completion"], d.Timings["ttft_ms"], d.Timings["total_ms"], d.Timings["tokens_per_s"]);
            Console.WriteLine("  line: \"{0}\"", d.Text.Replace("\n", "\\n"));
            Console.WriteLine("  lore: {0}", string.Join(", ", d.Lore));
        }
    }

    /// <summary>Reads "say &lt;npc&gt; &lt;seed&gt; &lt;max_tokens&gt; &lt;session&gt; &lt;text&gt;" lines (tab-separated) from stdin;
    /// answers each with "ttft_ms=&lt;client&gt; total_ms=&lt;client&gt; server_ttft_ms=... chunks=n" (client clock, send -> first chunk).</summary>
    static void Bench(SidecarClient c)
    {
        c.Connect();
        Console.WriteLine("ready");
        string cmd;
        while ((cmd = Console.ReadLine()) != null)
        {
            var f = cmd.Split('\t');
            if (f[0] == "quit") break;
            if (f[0] != "say" || f.Length != 6) { Console.WriteLine("error bad command"); continue; }
            double first = -1;
            int chunks = 0;
            long sent = Stopwatch.GetTimestamp();
            var stream = c.Say(f[1], f[5], new SayOptions { Seed = long.Parse(f[2], CultureInfo.InvariantCulture), MaxTokens = int.Parse(f[3], CultureInfo.InvariantCulture), Session = f[4] },
                ch => { if (Interlocked.Increment(ref chunks) == 1) first = Ms(sent); });
            Done d = stream.Completion.GetAwaiter().GetResult();
            double total = Ms(sent);
            Console.WriteLine(string.Format(CultureInfo.InvariantCulture, "ttft_ms={0:0.###} total_ms={1:0.###} server_ttft_ms={2} chunks={3} finish={4}",
                first, total, d.Timings["ttft_ms"], chunks, d.FinishReason));
        }
    }
}
