// Console test program for the Unity package's engine-agnostic core (bridge/clients/unity/Runtime/Core), built with
// Mono's mcs (-langversion:7.2) and run by tests/clients/test_unity_client.py against a real sidecar on loopback.
//
//   mono ClientTests.exe <scenario> [endpoint | vectors.json]
//
// Prints "PASS <scenario>" and exits 0, or prints "FAIL <scenario>: why" and exits 1.

using System;
using System.Collections;
using System.Collections.Generic;
using System.Diagnostics;
using System.Globalization;
using System.IO;
using System.Linq;
using System.Text;
using System.Threading;
using System.Threading.Tasks;
using Narrative.Sidecar;

static class ClientTests
{
    const string Npc = "odile-brask";
    const string Other = "hale-corrow";

    static int Main(string[] args)
    {
        if (args.Length < 1) { Console.Error.WriteLine("usage: ClientTests.exe <scenario> [endpoint|vectors.json]"); return 2; }
        string scenario = args[0], arg = args.Length > 1 ? args[1] : "tcp://127.0.0.1:5555";
        var sw = Stopwatch.StartNew();
        try
        {
            switch (scenario)
            {
                case "vectors": Vectors(arg); break;
                case "extra-vectors": ExtraVectors(arg); break;
                case "hostile": Hostile(arg); break;
                case "hello": Hello(arg); break;
                case "conversation": Conversation(arg); break;
                case "cancel": CancelMidStream(arg); break;
                case "ping-during-decode": PingDuringDecode(arg); break;
                case "unknown-npc": UnknownNpc(arg); break;
                case "two-npcs": TwoNpcs(arg); break;
                case "frame-too-large": FrameTooLarge(arg); break;
                case "drop": DropMidStream(arg); break;
                case "restart": Restart(arg); break;
                case "lore": Lore(arg); break;
                case "actions": Actions(arg); break;
                case "heartbeat": Heartbeat(arg); break;
                default: Console.Error.WriteLine("unknown scenario " + scenario); return 2;
            }
            Console.WriteLine("PASS {0} ({1} ms)", scenario, sw.ElapsedMilliseconds);
            return 0;
        }
        catch (Exception e)
        {
            var inner = e is AggregateException ? ((AggregateException)e).Flatten().InnerException : e;
            Console.WriteLine("FAIL {0}: {1}", scenario, inner);
            return 1;
        }
    }

    // ---- helpers -------------------------------------------------------------------------------------------------

    static void Check(bool ok, string what)
    {
        if (!ok) throw new Exception("check failed: " + what);
    }

    static T Await<T>(Task<T> t, int seconds = 180)
    {
        if (!t.Wait(TimeSpan.FromSeconds(seconds))) throw new TimeoutException("task did not finish in " + seconds + " s");
        return t.Result;
    }

    static void Await(Task t, int seconds = 180)
    {
        if (!t.Wait(TimeSpan.FromSeconds(seconds))) throw new TimeoutException("task did not finish in " + seconds + " s");
    }

    /// <summary>The exception a task faulted with (the test fails when it did not fault).</summary>
    static SidecarException Faults(Task t, int seconds = 180)
    {
        try { t.Wait(TimeSpan.FromSeconds(seconds)); }
        catch (AggregateException e)
        {
            var se = e.Flatten().InnerException as SidecarException;
            if (se != null) return se;
            throw;
        }
        throw new Exception("expected the task to fail, it " + (t.IsCompleted ? "succeeded" : "is still running"));
    }

    static SidecarClient NewClient(string endpoint, string name = "csharp-tests")
    {
        return new SidecarClient(new SidecarClientOptions
        {
            Endpoint = endpoint, ClientName = name, StreamTimeout = TimeSpan.FromSeconds(120),
            Log = s => Console.WriteLine("  [client] " + s),
        });
    }

    static string Session(string tag) { return tag + "-" + Guid.NewGuid().ToString("N").Substring(0, 8); }

    static byte[] Hex(string h)
    {
        var b = new byte[h.Length / 2];
        for (int i = 0; i < b.Length; i++) b[i] = byte.Parse(h.Substring(2 * i, 2), NumberStyles.HexNumber);
        return b;
    }

    static string ToHex(byte[] b) { return BitConverter.ToString(b).Replace("-", "").ToLowerInvariant(); }

    // ---- wire vectors ----------------------------------------------------------------------------------------------

    /// <summary>Every example of PROTOCOL.md (bridge/clients/protocol-vectors.json): msgpack decodes to the JSON value,
    /// re-encodes byte for byte (generic and typed), and requests built from typed classes produce the same bytes.</summary>
    static void Vectors(string path)
    {
        var doc = (MsgMap)Json.Parse(File.ReadAllText(path));
        var vectors = doc.GetArray("vectors");
        Check(vectors != null && vectors.Count >= 23, "protocol-vectors.json holds the 23 examples");
        var seen = new HashSet<string>();
        foreach (MsgMap v in vectors)
        {
            string type = v.GetString("type");
            byte[] bytes = Hex(v.GetString("msgpack_hex"));
            object json = v["json"];

            object decoded = MsgPack.Decode(bytes);
            Check(JsonEquals(decoded, json), type + ": decoded msgpack equals the JSON example");
            string again = ToHex(MsgPack.Encode(decoded));
            Check(again == ToHex(bytes), type + ": generic re-encode is byte-exact\n  want " + ToHex(bytes) + "\n  got  " + again);

            Message typed = Message.Decode(bytes);
            Check(typed.Type == type && !(typed is UnknownMessage), type + ": decodes to its typed class, got " + typed.GetType().Name);
            string typedHex = ToHex(typed.Encode());
            Check(typedHex == ToHex(bytes), type + ": typed re-encode is byte-exact\n  want " + ToHex(bytes) + "\n  got  " + typedHex);
            seen.Add(type);
            Console.WriteLine("  {0,-17} {1,4} bytes  decode, re-encode (generic, typed): byte-exact", type, bytes.Length);
        }

        // requests built from the typed classes, as the client sends them
        var built = new Dictionary<string, Message>
        {
            { "hello", new Hello { Id = "c1", Client = "godot-demo" } },
            { "say", Id(SidecarClient.SayMessage("odile-brask", "Any news from the docks?", new SayOptions()), "r7") },
            { "event", Id(SidecarClient.EventMessage("The player paid Odile ten silver marks.", "save-1", "odile-brask", null, null, null, null), "e1") },
            { "state", Id(SidecarClient.StateMessage(new Dictionary<string, object> { { "quest.heron", "done" }, { "gold", 12 } }, new[] { "night" }, "save-1"), "s1") },
            { "declare", Id(SidecarClient.DeclareMessage(new[] { GiveItem() }, new Dictionary<string, FieldSpec> { { "emotion", new FieldSpec("neutral", "warm", "wary") } }, 1, null, "save-1"), "d1") },
            { "cancel", new Cancel { Id = "x1", Target = "r7" } },
            { "reset", new Reset { Id = "z1", Npc = "odile-brask" } },
            { "ping", new Ping { Id = "p1" } },
            { "lore.query", new LoreQuery { Id = "q1", Text = "the barge", Npc = "odile-brask" } },
            { "lore.explain", new LoreExplain { Id = "w1", Npc = "odile-brask", Text = "the barge", History = new List<string> { "hello" } } },
            { "generate", new Generate { Id = "g1", Quest = "harrows-lamp", Seed = 7 } },
        };
        foreach (MsgMap v in vectors)
        {
            Message m;
            if (!built.TryGetValue(v.GetString("type"), out m)) continue;
            Check(ToHex(m.Encode()) == v.GetString("msgpack_hex"), m.Type + ": built request encodes byte-exact, got " + ToHex(m.Encode()));
            built.Remove(m.Type);
        }
        Check(built.Count == 0, "every request type has a vector: missing " + string.Join(",", built.Keys));

        // typed fields
        var byType = vectors.Cast<MsgMap>().ToDictionary(v => v.GetString("type"), v => Message.Decode(Hex(v.GetString("msgpack_hex"))));
        var ready = (Ready)byType["ready"];
        Check(ready.MaxFrameBytes == 65536 && ready.Npcs.SequenceEqual(new[] { "odile-brask" }) && ready.Models["dialogue"] == "SmolLM2-135M-Instruct.Q4_1.gguf", "ready fields");
        var done = (Done)byType["done"];
        Check(done.FinishReason == "stop" && done.Timings["ttft_ms"] == 412.5 && done.Timings["tokens_per_s"] == 55.2 && done.Tokens["prompt"] == 812, "done fields");
        var chunk = (Chunk)byType["chunk"];
        Check(chunk.Seq == 0 && chunk.Text == "Sit, pet.", "chunk fields");
        var hit = ((LoreResult)byType["lore.result"]).Entries[0];
        Check(hit.Entry == "patient-heron" && hit.Score == 2.01 && hit.Tokens == 180 && hit.Why == "key:barge", "lore.result fields");
        var ex = (LoreExplanation)byType["lore.explanation"];
        Check(ex.Budget == 400 && ex.Included[0].Key == "barge" && ex.Dropped[0].Reason == "scope" && ex.Included[0].Similarity == null, "lore.explanation fields");
        Check(byType["lore.changed"].IsEvent && ((LoreChanged)byType["lore.changed"]).Entries == 42, "lore.changed is an event");
        Check(byType["shutdown"].IsEvent && ((Shutdown)byType["shutdown"]).Reason == "stopping", "shutdown is an event with its reason");
        Check(((LoreFileError)byType["lore.error"]).Line == 3, "lore.error fields");
        var gen = (GenerateResult)byType["generate.result"];
        Check(gen.Status == "flagged" && gen.Findings[0].Check == "must_mention" && gen.Output.GetString("title") == "The Red Seal" && gen.Timings["decode_ms"] == 6200.0, "generate.result fields");
        var act = (NpcAction)byType["action"];
        Check(act.Id == "r7" && act.Seq == 0 && act.Name == "give_item" && act.Args.GetString("item") == "room key", "action fields");
        var ev = (GameEvent)byType["event"];
        Check(ev.Text.StartsWith("The player paid") && ev.Session == "save-1" && ev.Npc == "odile-brask" && ev.Npcs == null && ev.State == null, "event fields");
        var st = (State)byType["state"];
        Check(st.Set.GetString("quest.heron") == "done" && st.Set.GetLong("gold") == 12 && st.Unset.SequenceEqual(new[] { "night" }), "state fields");
        var dec = (Declare)byType["declare"];
        var item = dec.Actions[0].Parameters.GetMap("properties").GetMap("item");
        Check(dec.Actions.Count == 1 && dec.Actions[0].Name == "give_item" && item.GetStringList("enum").SequenceEqual(new[] { "ale", "room key" })
              && dec.Fields["emotion"].Enum.Count == 3 && dec.MaxActions == 1 && dec.Npc == null, "declare fields");
        Check(((Ok)byType["ok"]).Count == null && done.Fields == null && done.ActionCount == null && done.Rejected == null && done.Actions.Count == 0,
              "absent optional fields are null (ok.count, done.fields/actions/rejected)");
        var err = SidecarException.FromError((ErrorMessage)byType["error"]);
        Check(err is UnknownNpcException && err.Code == ErrorCode.UnknownNpc && err.RequestId == "r8" && err.Detail == "unknown NPC 'bob'", "error -> UnknownNpcException");

        // forward compatibility: extra fields ignored (kept in Raw), unknown types surfaced as UnknownMessage
        var extra = new MsgMap { };
        extra["v"] = 1L; extra["id"] = "r7"; extra["type"] = "chunk"; extra["seq"] = 3L; extra["text"] = "x"; extra["mood"] = "wry";
        var ec = (Chunk)Message.Decode(MsgPack.Encode(extra));
        Check(ec.Seq == 3 && (string)ec.Raw["mood"] == "wry", "unknown extra field ignored");
        var unk = new MsgMap(); unk["v"] = 1L; unk["id"] = "ev-9"; unk["type"] = "weather.changed"; unk["sky"] = "ash";
        var um = Message.Decode(MsgPack.Encode(unk));
        Check(um is UnknownMessage && um.Type == "weather.changed" && um.IsEvent && ToHex(um.Encode()) == ToHex(MsgPack.Encode(unk)), "unknown type -> UnknownMessage");
        var unknownCode = SidecarException.FromError(new ErrorMessage { Id = "a", Code = "overheated", Text = "x" });
        Check(unknownCode.Code == ErrorCode.Unknown && unknownCode.CodeName == "overheated", "unknown error code kept as text");

        // every width of int, float32, bin, str16/32, map16, array16 round-trip
        var wide = new MsgMap();
        long[] ints = { 0, 127, 128, 255, 256, 65535, 65536, 4294967295L, 4294967296L, long.MaxValue, -1, -32, -33, -128, -129, -32768, -32769, int.MinValue, (long)int.MinValue - 1, long.MinValue };
        for (int i = 0; i < ints.Length; i++) wide["i" + i] = ints[i];
        wide["u64"] = ulong.MaxValue; wide["f32"] = 1.5f; wide["f64"] = -0.1; wide["bin"] = new byte[300]; wide["nil"] = null; wide["t"] = true; wide["f"] = false;
        wide["s300"] = new string('x', 300); wide["s70k"] = new string('y', 70000); wide["utf8"] = "Ödile’s 🜂";
        var arr = new List<object>(); for (int i = 0; i < 20; i++) arr.Add((long)i); wide["a20"] = arr;
        var bigmap = new MsgMap(); for (int i = 0; i < 20; i++) bigmap["k" + i] = (long)i; wide["m20"] = bigmap;
        byte[] wb = MsgPack.Encode(wide);
        var back = (MsgMap)MsgPack.Decode(wb);
        Check(ToHex(MsgPack.Encode(back)) == ToHex(wb), "all widths round-trip byte-exact");
        for (int i = 0; i < ints.Length; i++) Check(back.GetLong("i" + i) == ints[i], "int " + ints[i]);
        Check((ulong)back["u64"] == ulong.MaxValue && (float)back["f32"] == 1.5f && back.GetDouble("f64") == -0.1 && ((byte[])back["bin"]).Length == 300, "u64/f32/f64/bin");
        Check(back.GetString("utf8") == "Ödile’s 🜂" && back.GetString("s70k").Length == 70000 && back.ContainsKey("nil") && back["nil"] == null, "str/nil");
        Check(seen.Count >= 23, "all message types seen");
    }

    static T Id<T>(T m, string id) where T : Message { m.Id = id; return m; }

    /// <summary>PROTOCOL.md's give_item action, built as a game would (a string[] for the enum, a Dictionary inside a MsgMap).</summary>
    static ActionSpec GiveItem()
    {
        var item = new Dictionary<string, object> { { "type", "string" }, { "enum", new[] { "ale", "room key" } } };
        return new ActionSpec("give_item", "Hand the player an item.",
            new MsgMap { ["type"] = "object", ["properties"] = new MsgMap { ["item"] = item }, ["required"] = new List<string> { "item" } });
    }

    /// <summary>Round trip of one vector: msgpack decodes to the JSON value, re-encodes byte for byte (generic and typed).</summary>
    static Message RoundTrip(MsgMap v, string label)
    {
        string type = v.GetString("type");
        byte[] bytes = Hex(v.GetString("msgpack_hex"));
        object decoded = MsgPack.Decode(bytes);
        Check(JsonEquals(decoded, v["json"]), label + ": decoded msgpack equals the JSON value");
        Check(ToHex(MsgPack.Encode(decoded)) == ToHex(bytes), label + ": generic re-encode is byte-exact");
        Message typed = Message.Decode(bytes);
        Check(typed.Type == type && !(typed is UnknownMessage), label + ": decodes to its typed class, got " + typed.GetType().Name);
        string typedHex = ToHex(typed.Encode());
        Check(typedHex == ToHex(bytes), label + ": typed re-encode is byte-exact\n  want " + ToHex(bytes) + "\n  got  " + typedHex);
        Console.WriteLine("  {0,-25} {1,4} bytes  decode, re-encode (generic, typed): byte-exact", label, bytes.Length);
        return typed;
    }

    /// <summary>tests/clients/wire_cases.py: the optional fields of the event/state/declare/action/done/ok messages, encoded by
    /// bridge/protocol.py (nested maps and lists of bool, int, float64, str). Each round-trips byte for byte; the requests the
    /// client API builds (Say, EventAsync, SetStateAsync, DeclareAsync, from Unity-style values: C# floats, arrays,
    /// Dictionaries) are byte-exact; typed fields read right; a say stream hands actions to onAction and to done.Actions.</summary>
    static void ExtraVectors(string path)
    {
        var doc = (MsgMap)Json.Parse(File.ReadAllText(path));
        var byName = new Dictionary<string, MsgMap>();
        var typed = new Dictionary<string, Message>();
        foreach (MsgMap v in doc.GetArray("vectors"))
        {
            byName[v.GetString("name")] = v;
            typed[v.GetString("name")] = RoundTrip(v, v.GetString("name"));
        }

        // what the API sends, from what a Unity game has at hand (floats are float32 there: sent as float64)
        var schema = new MsgMap
        {
            ["type"] = "object",
            ["properties"] = new Dictionary<string, object>
            {
                { "item", new MsgMap { ["type"] = "string", ["enum"] = new[] { "ale", "room key" } } },
                { "count", new MsgMap { ["type"] = "integer", ["minimum"] = 1, ["maximum"] = 3 } },
                { "price", new MsgMap { ["type"] = "number", ["minimum"] = 0.5f } },
                { "paid", new MsgMap { ["type"] = "boolean" } },
                { "note", new MsgMap { ["type"] = "string", ["maxLength"] = (short)40, ["pattern"] = "^[a-z ]*$" } },
            },
            ["required"] = new List<object> { "item", "count" },
        };
        var built = new Dictionary<string, Message>
        {
            { "say+state", Id(SidecarClient.SayMessage("odile-brask", "A room, please.", new SayOptions
                { Session = "save-1", MaxTokens = 64, Temperature = 0.7, Seed = 3,
                  State = new Dictionary<string, object> { { "night", true }, { "gold", 12 }, { "rep", 0.5f }, { "quest.heron", "done" } } }), "r9") },
            { "event+npcs+state", Id(SidecarClient.EventMessage("A bell rings.", "save-1", null, new List<string> { "odile-brask", "hale-corrow" }, null, null,
                new Dictionary<string, object> { { "bell", true }, { "hour", 23L }, { "temp", -1.25f }, { "weather", "ash" } }), "e2") },
            { "event+location", Id(SidecarClient.EventMessage("A fire in Lowmarket.", null, null, null, "lowmarket", null, null), "e3") },
            { "event+faction", Id(SidecarClient.EventMessage("The reedcutters call a meeting.", "save-1", null, null, null, "reedcutters", null), "e4") },
            { "event+everyone", Id(SidecarClient.EventMessage("Night falls.", null, null, null, null, null, null), "e5") },
            { "state+mixed", Id(SidecarClient.StateMessage(new Dictionary<string, object> { { "hp", 0.75f }, { "alive", false }, { "deaths", -3 }, { "big", 70000u }, { "name", "Tam" } },
                new[] { "night", "gold" }, null), "s2") },
            { "state+empty", Id(SidecarClient.StateMessage(null, null, "save-1"), "s3") },
            { "declare+npc", Id(SidecarClient.DeclareMessage(
                new[] { new ActionSpec("give_item", "Hand the player an item.", schema),
                        new ActionSpec("open_shop", "Show the wares.", new MsgMap { ["type"] = "object", ["properties"] = new MsgMap() }) },
                new Dictionary<string, FieldSpec> { { "emotion", new FieldSpec("neutral", "warm", "wary") { Description = "Her face." } }, { "gesture", new FieldSpec("none", "nod") } },
                2, "odile-brask", "save-1"), "d2") },
            { "declare+remove", Id(SidecarClient.DeclareMessage(new List<ActionSpec>(), null, 1, null, "save-1"), "d3") },
        };
        foreach (var kv in built)
        {
            string want = byName[kv.Key].GetString("msgpack_hex"), got = ToHex(kv.Value.Encode());
            Check(got == want, kv.Key + ": the API's request is byte-exact\n  want " + want + "\n  got  " + got);
            Console.WriteLine("  {0,-25} built by the client API: byte-exact", kv.Key);
        }

        // the API refuses what the protocol cannot carry, before sending
        try { SidecarClient.StateMessage(new Dictionary<string, object> { { "nested", new MsgMap() } }, null, null); throw new Exception("a map as a state value accepted"); }
        catch (ArgumentException e) { Check(e.Message.Contains("set.nested"), "the error names the key: " + e.Message); }
        try { SidecarClient.EventMessage("x", null, "odile-brask", null, null, "reedcutters", null); throw new Exception("an event with two targets accepted"); }
        catch (ArgumentException) { }

        // typed fields
        var done = (Done)typed["done+declared"];
        Check(done.Fields["emotion"] == "warm" && done.Fields["gesture"] == "nod" && done.ActionCount == 1 && done.ForgottenTurns == 2
              && done.Rejected.Count == 1 && done.Rejected[0].Name == "give_item" && done.Rejected[0].Reason.Contains("dragon"), "done: fields, actions, rejected, forgotten_turns");
        Check(((Ok)typed["ok+count"]).Count == 2, "ok.count");
        var act = (NpcAction)typed["action+mixed"];
        Check(act.Seq == 1 && act.Args.GetLong("count") == 2 && act.Args.GetDouble("price") == 0.5 && act.Args.GetBool("paid") && act.Args.GetString("item") == "ale", "action args of mixed types");
        var say = (Say)typed["say+state"];
        Check(say.State.GetBool("night") && say.State.GetLong("gold") == 12 && say.State.GetDouble("rep") == 0.5 && say.Temperature == 0.7, "say.state");
        var ev = (GameEvent)typed["event+npcs+state"];
        Check(ev.Npcs.SequenceEqual(new[] { "odile-brask", "hale-corrow" }) && ev.Npc == null && ev.State.GetDouble("temp") == -1.25, "event npcs and state");
        Check(((GameEvent)typed["event+location"]).Location == "lowmarket" && ((GameEvent)typed["event+faction"]).Faction == "reedcutters", "event location, faction");
        var st = (State)typed["state+mixed"];
        Check(st.Session == null && st.Set.GetDouble("hp") == 0.75 && !st.Set.GetBool("alive", true) && st.Set.GetLong("deaths") == -3 && st.Unset.Count == 2, "state set/unset");
        var dec = (Declare)typed["declare+npc"];
        Check(dec.Npc == "odile-brask" && dec.MaxActions == 2 && dec.Actions[1].Name == "open_shop" && dec.Fields["gesture"].Description == ""
              && dec.Actions[0].Parameters.GetMap("properties").GetMap("price").GetDouble("minimum") == 0.5, "declare npc, fields, schema");
        var schemaErr = SidecarException.FromError((ErrorMessage)typed["error+unsupported_schema"]);
        Check(schemaErr is UnsupportedSchemaException && schemaErr.Code == ErrorCode.UnsupportedSchema && schemaErr.Detail.Contains("target"), "error -> UnsupportedSchemaException");
        Check(SidecarException.Parse("context_overflow") == ErrorCode.ContextOverflow, "context_overflow is known");
        var busyMsg = (ErrorMessage)typed["error+busy"];
        var busyErr = SidecarException.FromError(busyMsg) as BusyException;
        Check(busyMsg.RetryAfterMs == 1500 && busyErr != null && busyErr.Code == ErrorCode.Busy && busyErr.RequestId == "r10"
              && busyErr.RetryAfterMs == 1500 && busyErr.Detail.Contains("retry later"), "error busy -> BusyException with RetryAfterMs 1500");
        Check(((ErrorMessage)typed["error+unsupported_schema"]).RetryAfterMs == null
              && ((BusyException)SidecarException.FromError(new ErrorMessage { Id = "b", Code = "busy", Text = "x" })).RetryAfterMs == null,
              "no retry_after_ms -> RetryAfterMs null");
        Console.WriteLine("  error+busy                retry_after_ms -> BusyException.RetryAfterMs {0}", busyErr.RetryAfterMs);

        // a say stream, fed the stream's messages as the reader thread would: chunk, action, action, done
        using (var c = new SidecarClient("tcp://127.0.0.1:9"))
        {
            var order = new List<string>();
            var s = new SayStream(c)
            {
                OnChunk = ch => order.Add("chunk"), OnAction = a => order.Add("action " + a.Seq + " " + a.Name), OnDone = x => order.Add("done"),
                TimeoutMs = 60000, RequestId = "r9",
            };
            s.Deliver(new Chunk { Id = "r9", Seq = 0, Text = "Here." }, c);
            s.Deliver(new NpcAction { Id = "r9", Seq = 0, Name = "open_shop" }, c);
            Check(s.Actions.Count == 1 && !s.IsFinished, "an action does not end the stream");
            s.Deliver(Message.Decode(Hex(byName["action+mixed"].GetString("msgpack_hex"))), c);
            s.Deliver(Message.Decode(Hex(byName["done+declared"].GetString("msgpack_hex"))), c);
            Done d = Await(s.Completion, 5);
            Check(order.SequenceEqual(new[] { "chunk", "action 0 open_shop", "action 1 give_item", "done" }), "callbacks in stream order: " + string.Join(", ", order));
            Check(d.Actions.Select(a => a.Name).SequenceEqual(new[] { "open_shop", "give_item" }) && d.Actions[1].Args.GetLong("count") == 2, "done.Actions holds the turn's actions");
            Check(d.Fields["emotion"] == "warm" && s.Actions.Count == 2, "done.Fields; SayStream.Actions");
        }
        Console.WriteLine("  a say stream: chunk -> onAction x2 -> onDone, done.Actions and done.Fields filled");
    }

    static bool JsonEquals(object mp, object js)
    {
        if (mp == null || js == null) return mp == null && js == null;
        if (js is long) return mp is long && (long)mp == (long)js;
        if (js is double) return (mp is double && (double)mp == (double)js) || (mp is long && (long)mp == (double)js);
        if (js is string || js is bool) return js.Equals(mp);
        var jm = js as MsgMap;
        if (jm != null)
        {
            var mm = mp as MsgMap;
            if (mm == null || mm.Count != jm.Count) return false;
            // key order does not matter (PROTOCOL.md); the bytes, order included, are checked by the byte-exact re-encodes
            foreach (var kv in jm) { object o; if (!mm.TryGetValue(kv.Key, out o) || !JsonEquals(o, kv.Value)) return false; }
            return true;
        }
        var ja = js as List<object>;
        var ma = mp as List<object>;
        if (ja == null || ma == null || ja.Count != ma.Count) return false;
        for (int i = 0; i < ja.Count; i++) if (!JsonEquals(ma[i], ja[i])) return false;
        return true;
    }

    /// <summary>Hostile and truncated input: every failure is a MsgPackException, quickly, never a hang or another exception.</summary>
    static void Hostile(string vectorsPath)
    {
        var doc = (MsgMap)Json.Parse(File.ReadAllText(vectorsPath));
        int truncations = 0;
        foreach (MsgMap v in doc.GetArray("vectors"))
        {
            var b = Hex(v.GetString("msgpack_hex"));
            for (int n = 0; n < b.Length; n++)
            {
                var cut = new byte[n];
                Buffer.BlockCopy(b, 0, cut, 0, n);
                ExpectBad(cut, "truncated " + v.GetString("type") + " at " + n);
                truncations++;
            }
        }
        var deep = new byte[100000];
        for (int i = 0; i < deep.Length; i++) deep[i] = 0x91;  // [[[[...
        ExpectBad(deep, "100000-deep arrays");
        ExpectBad(new byte[] { 0xdd, 0xff, 0xff, 0xff, 0xff }, "array32 claiming 4G elements");
        ExpectBad(new byte[] { 0xdf, 0xff, 0xff, 0xff, 0xff, 0xc0 }, "map32 claiming 4G pairs");
        ExpectBad(new byte[] { 0xdb, 0x7f, 0xff, 0xff, 0xff, 0x41 }, "str32 claiming 2 GiB");
        ExpectBad(new byte[] { 0xc6, 0xff, 0xff, 0xff, 0xff }, "bin32 claiming 4 GiB");
        ExpectBad(new byte[] { 0xc1 }, "0xc1");
        ExpectBad(new byte[] { 0xd4, 0x01, 0x02 }, "fixext1");
        ExpectBad(new byte[] { 0x81, 0x01, 0x02 }, "int map key");
        ExpectBad(new byte[] { 0xa2, 0xc3, 0x28 }, "invalid UTF-8");
        ExpectBad(new byte[] { 0x01, 0x02 }, "trailing bytes");
        try { Message.Decode(new byte[] { 0x92, 0x01, 0x02 }); throw new Exception("array payload accepted"); } catch (MsgPackException) { }
        try { Message.Decode(MsgPack.Encode(new MsgMap { })); throw new Exception("map without type accepted"); } catch (MsgPackException) { }
        var badField = new MsgMap(); badField["v"] = 1L; badField["id"] = "r"; badField["type"] = "chunk"; badField["seq"] = "zero"; badField["text"] = "x";
        try { Message.Decode(MsgPack.Encode(badField)); throw new Exception("chunk with str seq accepted"); }
        catch (MsgPackException e) { Check(e.Message.Contains("'seq'"), "the error names the field: " + e.Message); }

        // random garbage and random mutations of real payloads
        var rng = new Random(11);
        var sw = Stopwatch.StartNew();
        var samples = doc.GetArray("vectors").Cast<MsgMap>().Select(v => Hex(v.GetString("msgpack_hex"))).ToArray();
        int fuzzed = 0;
        for (int i = 0; i < 50000; i++)
        {
            byte[] b;
            if (i % 2 == 0) { b = new byte[rng.Next(0, 64)]; rng.NextBytes(b); }
            else
            {
                b = (byte[])samples[rng.Next(samples.Length)].Clone();
                for (int k = rng.Next(1, 4); k > 0; k--) b[rng.Next(b.Length)] = (byte)rng.Next(256);
            }
            try { Message.Decode(b); } catch (MsgPackException) { }
            fuzzed++;
        }
        Check(sw.ElapsedMilliseconds < 30000, "fuzzing took " + sw.ElapsedMilliseconds + " ms");
        Console.WriteLine("  {0} truncations, 11 crafted payloads, {1} fuzzed payloads: only MsgPackException ({2} ms)", truncations, fuzzed, sw.ElapsedMilliseconds);
    }

    static void ExpectBad(byte[] b, string what)
    {
        var sw = Stopwatch.StartNew();
        try { MsgPack.Decode(b); }
        catch (MsgPackException) { Check(sw.ElapsedMilliseconds < 2000, what + " took " + sw.ElapsedMilliseconds + " ms"); return; }
        throw new Exception(what + ": decoded without an error");
    }

    // ---- against the real sidecar ----------------------------------------------------------------------------------

    static void Hello(string endpoint)
    {
        using (var c = NewClient(endpoint))
        {
            Ready r = c.Connect();
            Console.WriteLine("  ready: server={0} npcs=[{1}] limits={{{2}}} models={{{3}}}", r.Server, string.Join(", ", r.Npcs),
                string.Join(", ", r.Limits.Select(kv => kv.Key + ": " + kv.Value)), string.Join(", ", r.Models.Select(kv => kv.Key + ": " + kv.Value)));
            Check(r.Npcs.Contains(Npc) && r.Npcs.Contains(Other), "ready lists the sample NPCs");
            Check(r.MaxFrameBytes == 64 * 1024, "ready.limits.max_frame_bytes is 64 KiB, got " + r.MaxFrameBytes);
            Check(r.Models.ContainsKey("dialogue") && r.Models["dialogue"].EndsWith(".gguf"), "ready names the dialogue model");
            Ready again = Await(c.HelloAsync("csharp-tests-explicit"));
            Check(again.Server == r.Server, "an explicit hello is answered too");
            double rtt = Await(c.PingAsync());
            Console.WriteLine("  ping rtt {0:0.0} ms", rtt);
            Check(c.ConnectionCount == 1, "one connection");
        }
    }

    static void Conversation(string endpoint)
    {
        using (var c = NewClient(endpoint))
        {
            c.Connect();
            string session = Session("cs-conv");
            Done prev = null;
            foreach (var line in new[] { "Good evening. What is the Cracked Bellows famous for?", "And who is Pell Sedgewick?" })
            {
                var chunks = new List<Chunk>();
                var sw = Stopwatch.StartNew();
                Console.WriteLine("  > {0}", line);
                var stream = c.Say(Npc, line, new SayOptions { Session = session, MaxTokens = 32, Seed = 1 },
                    ch => { lock (chunks) chunks.Add(ch); Console.WriteLine("    +{0,5} ms  chunk {1,2} {2}", sw.ElapsedMilliseconds, ch.Seq, Quote(ch.Text)); });
                Done d = Await(stream.Completion);
                Console.WriteLine("    +{0,5} ms  done  {1}  tokens {{{2}}}  server ttft {3} ms", sw.ElapsedMilliseconds, d.FinishReason,
                    string.Join(", ", d.Tokens.Select(kv => kv.Key + ": " + kv.Value)), d.Timings["ttft_ms"]);
                Check(chunks.Count > 1, "the reply streams in more than one chunk, got " + chunks.Count);
                Check(chunks.Select(x => x.Seq).SequenceEqual(Enumerable.Range(0, chunks.Count).Select(i => (long)i)), "chunks arrive in seq order");
                Check(string.Concat(chunks.Select(x => x.Text)).Trim() == d.Text, "the chunks make the done text");
                Check(stream.Text.Trim() == d.Text, "SayStream.Text accumulates the line");
                Check(d.FinishReason == "stop" || d.FinishReason == "length", "finish_reason stop/length, got " + d.FinishReason);
                Check(d.Lore.Contains(Npc), "the NPC's card is in the prompt");
                if (prev != null)
                    Check(d.Tokens["cached"] >= prev.Tokens["prompt"], "turn 2 reuses turn 1 from the context (cached >= previous prompt)");
                prev = d;
            }
            Await(c.ResetAsync(Npc, session));
        }
    }

    static string Quote(string s) { return "\"" + s.Replace("\n", "\\n") + "\""; }

    static void CancelMidStream(string endpoint)
    {
        using (var c = NewClient(endpoint))
        {
            c.Connect();
            string session = Session("cs-cancel");
            SayStream stream = null;
            var started = new ManualResetEventSlim();
            stream = c.Say(Npc, "Tell me everything about the Long Smoulder, slowly.", new SayOptions { Session = session, MaxTokens = 400, Temperature = 1.0 },
                ch => { if (ch.Seq == 1) started.Set(); });
            Check(started.Wait(TimeSpan.FromSeconds(120)), "two chunks arrived");
            stream.Cancel();
            Done d = Await(stream.Completion);
            Console.WriteLine("  cancelled after {0} chunks: finish_reason={1}, completion={2} tokens", stream.ChunkCount, d.FinishReason, d.Tokens["completion"]);
            Check(d.FinishReason == "cancelled" && d.Cancelled, "finish_reason cancelled, got " + d.FinishReason);
            Check(d.Tokens["completion"] < 400, "stopped early");
            // the model is free: the next turn runs
            Done after = Await(c.SayAsync(Npc, "Never mind.", new SayOptions { Session = session, MaxTokens = 8 }));
            Check(after.FinishReason == "stop" || after.FinishReason == "length", "next turn after cancel runs");
            // cancelling a finished request: unknown_request, as a typed exception
            var got = new TaskCompletionSource<SidecarException>();
            c.Cancel(stream.RequestId, e => got.TrySetResult(e));
            var ure = Await(got.Task, 30);
            Check(ure is UnknownRequestException && ure.Code == ErrorCode.UnknownRequest, "cancel of a finished request -> UnknownRequestException, got " + ure);
            Console.WriteLine("  cancel of a finished stream: {0}", ure.Message);
        }
    }

    static void PingDuringDecode(string endpoint)
    {
        using (var c = NewClient(endpoint))
        {
            c.Connect();
            var first = new ManualResetEventSlim();
            var stream = c.Say(Other, "Tell me a long story about the Ashwardens.", new SayOptions { Session = Session("cs-ping"), MaxTokens = 120, Temperature = 1.0 },
                ch => first.Set());
            Check(first.Wait(TimeSpan.FromSeconds(120)), "decoding started");
            var rtts = new List<double>();
            for (int i = 0; i < 3; i++)
            {
                rtts.Add(Await(c.PingAsync(TimeSpan.FromSeconds(10))));
                Check(!stream.IsFinished, "pong arrived while the stream was still decoding");
            }
            int chunksAtPing = stream.ChunkCount;
            Done d = Await(stream.Completion);
            Console.WriteLine("  ping rtts during decode (same connection): {0} ms; chunks at last pong {1}, at done {2} ({3})",
                string.Join(", ", rtts.Select(x => x.ToString("0.0"))), chunksAtPing, stream.ChunkCount, d.FinishReason);
            Check(rtts.Max() < 5000, "answered during the decode, not after it");
        }
    }

    static void UnknownNpc(string endpoint)
    {
        using (var c = NewClient(endpoint))
        {
            c.Connect();
            var e = Faults(c.SayAsync("the-king", "hi"));
            Check(e is UnknownNpcException && e.Code == ErrorCode.UnknownNpc && e.CodeName == "unknown_npc", "SayAsync -> UnknownNpcException, got " + e);
            Check(e.Detail.Contains("the-king"), "the message names the NPC: " + e.Detail);
            Console.WriteLine("  task form: {0}: {1}", e.GetType().Name, e.Message);
            // callback form
            var got = new TaskCompletionSource<SidecarException>();
            bool doneCalled = false;
            c.Say("the-king", "hi", null, ch => { }, d => doneCalled = true, err => got.TrySetResult(err));
            var e2 = Await(got.Task, 30);
            Check(e2 is UnknownNpcException && !doneCalled, "callback form -> onError(UnknownNpcException)");
            var e3 = Faults(c.ResetAsync("the-king"));
            Check(e3 is UnknownNpcException, "reset of an unknown NPC -> UnknownNpcException");
            var e4 = Faults(c.LoreExplainAsync("the-king", "hi"));
            Check(e4 is UnknownNpcException, "lore.explain of an unknown NPC -> UnknownNpcException");
            var e5 = Faults(c.SayAsync(Npc, ""));
            Check(e5 is InvalidRequestException && e5.Detail.Contains("text"), "empty text -> InvalidRequestException naming the field, got " + e5);
            Console.WriteLine("  empty line: {0}", e5.Message);
            Check(Await(c.PingAsync()) > 0, "the connection goes on");
        }
    }

    static void TwoNpcs(string endpoint)
    {
        using (var a = NewClient(endpoint, "cs-a"))
        using (var b = NewClient(endpoint, "cs-b"))
        {
            a.Connect(); b.Connect();
            var sw = Stopwatch.StartNew();
            var seqA = new List<long>(); var seqB = new List<long>();
            long firstA = -1, firstB = -1;
            var ta = a.SayAsync(Npc, "Who are you?", new SayOptions { Session = Session("par-a"), MaxTokens = 24 }, ch => { lock (seqA) { if (firstA < 0) firstA = sw.ElapsedMilliseconds; seqA.Add(ch.Seq); } });
            var tb = b.SayAsync(Other, "Who are you?", new SayOptions { Session = Session("par-b"), MaxTokens = 24 }, ch => { lock (seqB) { if (firstB < 0) firstB = sw.ElapsedMilliseconds; seqB.Add(ch.Seq); } });
            Done da = Await(ta), db = Await(tb);
            Console.WriteLine("  {0}: {1} chunks, first at +{2} ms, done {3}: {4}", Npc, seqA.Count, firstA, da.FinishReason, Quote(da.Text));
            Console.WriteLine("  {0}: {1} chunks, first at +{2} ms, done {3}: {4}", Other, seqB.Count, firstB, db.FinishReason, Quote(db.Text));
            Check(seqA.SequenceEqual(Enumerable.Range(0, seqA.Count).Select(i => (long)i)) && seqA.Count > 0, Npc + ": chunks in order");
            Check(seqB.SequenceEqual(Enumerable.Range(0, seqB.Count).Select(i => (long)i)) && seqB.Count > 0, Other + ": chunks in order");
            Check(da.Lore.Contains(Npc) && db.Lore.Contains(Other), "each stream is its own NPC's");
        }
    }

    static void FrameTooLarge(string endpoint)
    {
        using (var c = NewClient(endpoint))
        {
            Ready r = c.Connect();
            string line = new string('x', (int)r.MaxFrameBytes + 4096);  // a 68 KiB line: over max_frame_bytes, under the hard limit
            var e = Faults(c.SayAsync(Npc, line));
            Check(e is FrameTooLargeException && e.Code == ErrorCode.FrameTooLarge, "a 64 KiB+ line -> FrameTooLargeException, got " + e);
            Console.WriteLine("  {0}-char line: {1}", line.Length, e.Message);
            Check(Await(c.PingAsync()) > 0 && c.ConnectionCount == 1, "the connection goes on");
        }
    }

    /// <summary>The connection drops mid-stream (a frame over the sidecar's hard limit makes libzmq close it): the
    /// stream fails with SidecarDisconnectedException, nothing is resent, the client reconnects and the next say works.</summary>
    static void DropMidStream(string endpoint)
    {
        using (var c = NewClient(endpoint))
        {
            c.Connect();
            var first = new ManualResetEventSlim();
            var reconnected = new ManualResetEventSlim();
            c.Connected += r => reconnected.Set();
            var stream = c.Say(Npc, "Describe every street of Cinderfen in detail.", new SayOptions { Session = Session("cs-drop"), MaxTokens = 200, Temperature = 1.0 }, ch => first.Set());
            Check(first.Wait(TimeSpan.FromSeconds(120)), "streaming");
            reconnected.Reset();
            try { c.SendRaw(new byte[2 * 1024 * 1024]); } catch (TransportClosedException) { }  // over hard_max_frame_bytes (1 MiB)
            var e = Faults(stream.Completion, 30);
            Check(e is SidecarDisconnectedException && e.Code == ErrorCode.Disconnected, "the stream in flight fails as disconnected, got " + e);
            Console.WriteLine("  in flight: {0}", e.Message);
            Check(reconnected.Wait(TimeSpan.FromSeconds(30)), "reconnected");
            Check(c.ConnectionCount == 2, "two connections, got " + c.ConnectionCount);
            Done d = Await(c.SayAsync(Npc, "Good day.", new SayOptions { MaxTokens = 16 }));
            Check(d.FinishReason == "stop" || d.FinishReason == "length", "the next say after reconnecting works");
            Console.WriteLine("  after reconnect: done {0} {1}", d.FinishReason, Quote(d.Text));
        }
    }

    /// <summary>The sidecar restarts mid-session. Protocol with the test harness: this program prints RESTART-NOW,
    /// the harness stops the sidecar and starts a new one on the same port.</summary>
    static void Restart(string endpoint)
    {
        using (var c = NewClient(endpoint))
        {
            var sw = Stopwatch.StartNew();
            var connects = new List<long>();
            var dropped = new ManualResetEventSlim();
            var back = new ManualResetEventSlim();
            c.Connected += r => { lock (connects) connects.Add(sw.ElapsedMilliseconds); if (connects.Count >= 2) back.Set(); };
            c.Disconnected += why => { Console.WriteLine("  +{0} ms disconnected: {1}", sw.ElapsedMilliseconds, why); dropped.Set(); };
            c.Connect();
            Done before = Await(c.SayAsync(Npc, "Hello there.", new SayOptions { MaxTokens = 16 }));
            Console.WriteLine("  +{0} ms before restart: done {1} {2}", sw.ElapsedMilliseconds, before.FinishReason, Quote(before.Text));
            var inflight = c.Say(Npc, "Describe every street of Cinderfen in detail.", new SayOptions { MaxTokens = 300, Temperature = 1.0 });
            while (inflight.ChunkCount == 0 && !inflight.IsFinished) Thread.Sleep(10);
            Console.WriteLine("RESTART-NOW");
            Console.Out.Flush();
            Check(dropped.Wait(TimeSpan.FromSeconds(60)), "the drop was noticed");
            // the stream in flight ends: either the old sidecar cancelled it on its way out (done cancelled), or it failed as disconnected
            try
            {
                Done d = Await(inflight.Completion, 30);
                Console.WriteLine("  in flight at the restart: done {0}", d.FinishReason);
                Check(d.FinishReason == "cancelled", "the stream in flight was cancelled by the stopping sidecar");
            }
            catch (AggregateException e)
            {
                var se = e.Flatten().InnerException as SidecarException;
                Check(se is SidecarDisconnectedException, "in flight -> disconnected, got " + e);
                Console.WriteLine("  in flight at the restart: {0}", se.Message);
            }
            // a request made while the sidecar is down waits for the new connection (sent once, after hello)
            var pending = c.SayAsync(Npc, "Are you still there?", new SayOptions { MaxTokens = 16 });
            Check(back.Wait(TimeSpan.FromSeconds(120)), "reconnected to the new sidecar");
            Console.WriteLine("  +{0} ms reconnected (hello re-sent, ready received; connections: {1})", connects[1], c.ConnectionCount);
            Done after = Await(pending);
            Console.WriteLine("  +{0} ms after restart: done {1} {2}", sw.ElapsedMilliseconds, after.FinishReason, Quote(after.Text));
            Done next = Await(c.SayAsync(Npc, "Good.", new SayOptions { MaxTokens = 8 }));
            Check(next.FinishReason == "stop" || next.FinishReason == "length", "the next say works");
            Check(c.ConnectionCount == 2, "exactly one reconnect");
        }
    }

    /// <summary>ZMTP heartbeats against a libzmq ROUTER that pings every 200 ms and drops a peer silent for 1 s
    /// (tests/clients/test_unity_client.py's stand-in peer). Idle 3 s without PINGs of our own: still the same
    /// connection, so we answered its PINGs. Then the harness freezes the peer (SIGSTOP): nothing arrives any more
    /// and the client declares it dead within HeartbeatTimeout; the request in flight fails as disconnected.</summary>
    static void Heartbeat(string endpoint)
    {
        var options = new SidecarClientOptions
        {
            Endpoint = endpoint, ClientName = "csharp-heartbeat", Log = s => Console.WriteLine("  [client] " + s),
            TransportFactory = () => new ZmtpTransport(new ZmtpOptions
            {
                // no PINGs of our own: surviving the idle phase proves we answer libzmq's PINGs with PONGs
                HeartbeatInterval = TimeSpan.Zero, HeartbeatTimeout = TimeSpan.FromMilliseconds(1500), HeartbeatTtl = TimeSpan.FromSeconds(1),
            }),
        };
        using (var c = new SidecarClient(options))
        {
            c.Connect();
            Thread.Sleep(3000);
            Check(c.IsConnected && c.ConnectionCount == 1, "an idle connection survives libzmq's 1 s heartbeat timeout");
            Console.WriteLine("  idle 3 s: still connection #{0}; ping {1:0.0} ms", c.ConnectionCount, Await(c.PingAsync()));
            var dropped = new ManualResetEventSlim();
            var sw = new Stopwatch();
            c.Disconnected += why => { sw.Stop(); Console.WriteLine("  +{0} ms after the freeze: {1}", sw.ElapsedMilliseconds, why); dropped.Set(); };
            Console.WriteLine("FREEZE-NOW");
            Console.Out.Flush();
            Thread.Sleep(100);  // the harness freezes the peer right away
            sw.Start();
            var ping = c.PingAsync(TimeSpan.FromSeconds(30));
            Check(dropped.Wait(TimeSpan.FromSeconds(10)), "a frozen peer is declared dead by the heartbeat timeout");
            var e = Faults(ping, 10);
            Check(e is SidecarDisconnectedException, "the ping in flight fails as disconnected (not after its 30 s timeout), got " + e);
            Check(sw.ElapsedMilliseconds < 5000, "dead peer noticed in " + sw.ElapsedMilliseconds + " ms");
        }
    }

    /// <summary>Declared actions and a per-line field for a session, a game event, then a line: every action that arrives is a
    /// declared one with valid arguments (in seq order, before done, counted by done), done.Fields holds a declared enum value,
    /// the event reached its one NPC (ok.count 1). The tiny model does not always act: the field is required, an action is not.</summary>
    static void Actions(string endpoint)
    {
        var items = new[] { "ale", "room key" };
        var emotions = new[] { "neutral", "warm", "wary" };
        var declared = new List<ActionSpec>
        {
            new ActionSpec("give_item", "Hand the player an item from behind the bar.", new MsgMap
            {
                ["type"] = "object",
                ["properties"] = new MsgMap { ["item"] = new MsgMap { ["type"] = "string", ["enum"] = items } },
                ["required"] = new[] { "item" },
            }),
            new ActionSpec("open_shop", "Show the player what the inn sells.", new MsgMap { ["type"] = "object", ["properties"] = new MsgMap() }),
        };
        var fields = new Dictionary<string, FieldSpec> { { "emotion", new FieldSpec(emotions) { Description = "Her face while she speaks." } } };
        using (var c = NewClient(endpoint))
        {
            c.Connect();
            string session = Session("cs-actions");
            Await(c.DeclareAsync(declared, fields, 1, null, session));
            long reached = Await(c.EventAsync("The player paid Odile ten silver marks.", session, npc: Npc));
            Console.WriteLine("  declared give_item(item), open_shop, field emotion; event reached {0} NPC(s)", reached);
            Check(reached == 1, "the event reached its one NPC (ok.count 1), got " + reached);

            var chunks = new List<Chunk>();
            var seen = new List<NpcAction>();
            bool doneSeen = false;
            var stream = c.Say(Npc, "A room for the night, please, and an ale.", new SayOptions { Session = session, MaxTokens = 48, Temperature = 0.7, Seed = 2 },
                ch => { lock (seen) { Check(seen.Count == 0, "chunks come before actions"); chunks.Add(ch); } },
                d => doneSeen = true, null,
                a => { lock (seen) seen.Add(a); Console.WriteLine("    action {0} {1} {2}", a.Seq, a.Name, Encoding(a.Args)); });
            Done done = Await(stream.Completion);
            Console.WriteLine("  done {0}: {1}; fields {{{2}}}; actions {3}; rejected {4}", done.FinishReason, Quote(done.Text),
                done.Fields == null ? "null" : string.Join(", ", done.Fields.Select(kv => kv.Key + ": " + kv.Value)), done.ActionCount,
                done.Rejected == null ? "none" : string.Join("; ", done.Rejected.Select(r => r.Name + ": " + r.Reason)));
            Check(doneSeen && chunks.Count > 0, "the line streamed, then onDone");
            foreach (var a in seen)
            {
                Check(declared.Any(d => d.Name == a.Name), "every action is a declared one, got " + a.Name);
                if (a.Name == "give_item") Check(items.Contains(a.Args.GetString("item")) && a.Args.Count == 1, "give_item's args validate: " + Encoding(a.Args));
                else Check(a.Args.Count == 0, "open_shop takes no arguments: " + Encoding(a.Args));
            }
            Check(seen.Select(a => a.Seq).SequenceEqual(Enumerable.Range(0, seen.Count).Select(i => (long)i)) && seen.Count <= 1, "actions in seq order, at most max_actions");
            Check(done.ActionCount == seen.Count && done.Actions.Select(a => a.Name).SequenceEqual(seen.Select(a => a.Name)), "done counts the actions and lists them");
            Check(done.Fields != null && done.Fields.ContainsKey("emotion") && emotions.Contains(done.Fields["emotion"]), "done.fields holds a declared emotion");
            Check(string.Concat(chunks.Select(x => x.Text)).Trim() == done.Text && !done.Text.Contains("\"emotion\""), "the tail is never spoken");

            // state of its own session (this sidecar's turns do not read state yet): accepted, and a bad key is named
            Await(c.SetStateAsync(new Dictionary<string, object> { { "quest.heron", "started" }, { "gold", 12 }, { "night", true }, { "rep", 0.5f } }, null, Session("cs-state")));
            var bad = Faults(c.SetStateAsync(new Dictionary<string, object> { { "bad key!", 1 } }, new[] { "night" }, Session("cs-state")));
            Check(bad is InvalidRequestException && bad.Detail.Contains("bad key!"), "a bad state key -> InvalidRequestException naming it, got " + bad);
            // what the sidecar cannot enforce is refused, typed
            var throwIt = new ActionSpec("throw", "", new MsgMap { ["type"] = "object", ["properties"] = new MsgMap { ["target"] = new MsgMap { ["type"] = "object" } } });
            var e = Faults(c.DeclareAsync(new[] { throwIt }, null, 1, null, Session("cs-bad")));
            Check(e is UnsupportedSchemaException && e.Detail.Contains("throw") && e.Detail.Contains("target"), "unsupported schema -> UnsupportedSchemaException naming it, got " + e);
            Console.WriteLine("  declare of an object argument: {0}", e.Message);
            var e2 = Faults(c.EventAsync("x", session, npc: "the-king"));
            Check(e2 is UnknownNpcException, "an event for an unknown NPC -> UnknownNpcException, got " + e2);
            // a session without a declaration: no actions, no fields
            Done plain = Await(c.SayAsync(Npc, "Open your shop, I want to buy something.", new SayOptions { Session = Session("cs-plain"), MaxTokens = 16, Seed = 3 }));
            Check(plain.Fields == null && plain.ActionCount == null && plain.Actions.Count == 0, "no declaration: no fields, no actions");
        }
    }

    static string Encoding(MsgMap m) { return "{" + string.Join(", ", m.Select(kv => kv.Key + ": " + kv.Value)) + "}"; }

    static void Lore(string endpoint)
    {
        using (var c = NewClient(endpoint))
        {
            c.Connect();
            LoreResult res = Await(c.LoreQueryAsync("Any news of the missing barge?", Npc));
            Check(res.Entries.Count > 0 && res.Entries[0].Entry == Npc && res.Entries[0].Why == "card", "lore.query: the NPC's card first");
            Check(res.Entries.Any(e => e.Entry == "loss-of-the-patient-heron"), "lore.query finds the barge entry");
            Console.WriteLine("  lore.query: {0}", string.Join(", ", res.Entries.Select(e => e.Entry + " (" + e.Why + ")")));
            LoreExplanation ex = Await(c.LoreExplainAsync(Npc, "the barge", new[] { "hello" }));
            Check(ex.Npc == Npc && ex.Included.Count > 0 && ex.Budget > 0, "lore.explain");
            Console.WriteLine("  lore.explain: {0} included, {1} dropped, used {2}/{3} tokens", ex.Included.Count, ex.Dropped.Count, ex.Used, ex.Budget);
            Await(c.ResetAsync(Npc, "cs-lore"));
            // this sidecar has no quest service: generate is refused with 'invalid' (the path is exercised end to end)
            var e1 = Faults(c.GenerateAsync("harrows-lamp", null, 7));
            Check(e1 is InvalidRequestException || e1 is UnknownQuestException, "generate -> typed error, got " + e1);
            Console.WriteLine("  generate: {0}", e1.Message);
        }
    }
}

/// <summary>A small JSON reader for the test vectors (objects -> MsgMap, keeping key order; integers -> long; other numbers -> double).</summary>
static class Json
{
    public static object Parse(string s)
    {
        int i = 0;
        object v = Value(s, ref i);
        Ws(s, ref i);
        if (i != s.Length) throw new FormatException("trailing JSON at " + i);
        return v;
    }

    static void Ws(string s, ref int i) { while (i < s.Length && char.IsWhiteSpace(s[i])) i++; }

    static object Value(string s, ref int i)
    {
        Ws(s, ref i);
        char c = s[i];
        if (c == '{')
        {
            var m = new MsgMap();
            i++; Ws(s, ref i);
            if (s[i] == '}') { i++; return m; }
            while (true)
            {
                Ws(s, ref i);
                string k = Str(s, ref i);
                Ws(s, ref i); if (s[i++] != ':') throw new FormatException("':' expected at " + i);
                m[k] = Value(s, ref i);
                Ws(s, ref i);
                if (s[i] == ',') { i++; continue; }
                if (s[i] == '}') { i++; return m; }
                throw new FormatException("',' or '}' expected at " + i);
            }
        }
        if (c == '[')
        {
            var a = new List<object>();
            i++; Ws(s, ref i);
            if (s[i] == ']') { i++; return a; }
            while (true)
            {
                a.Add(Value(s, ref i));
                Ws(s, ref i);
                if (s[i] == ',') { i++; continue; }
                if (s[i] == ']') { i++; return a; }
                throw new FormatException("',' or ']' expected at " + i);
            }
        }
        if (c == '"') return Str(s, ref i);
        if (s.Substring(i).StartsWith("true")) { i += 4; return true; }
        if (s.Substring(i).StartsWith("false")) { i += 5; return false; }
        if (s.Substring(i).StartsWith("null")) { i += 4; return null; }
        int start = i;
        while (i < s.Length && "+-0123456789.eE".IndexOf(s[i]) >= 0) i++;
        string num = s.Substring(start, i - start);
        long l;
        if (num.IndexOfAny(new[] { '.', 'e', 'E' }) < 0 && long.TryParse(num, NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out l)) return l;
        return double.Parse(num, CultureInfo.InvariantCulture);
    }

    static string Str(string s, ref int i)
    {
        if (s[i] != '"') throw new FormatException("string expected at " + i);
        i++;
        var sb = new StringBuilder();
        while (s[i] != '"')
        {
            char c = s[i++];
            if (c != '\\') { sb.Append(c); continue; }
            char e = s[i++];
            switch (e)
            {
                case 'n': sb.Append('\n'); break;
                case 't': sb.Append('\t'); break;
                case 'r': sb.Append('\r'); break;
                case 'b': sb.Append('\b'); break;
                case 'f': sb.Append('\f'); break;
                case 'u': sb.Append((char)Convert.ToInt32(s.Substring(i, 4), 16)); i += 4; break;
                default: sb.Append(e); break;
            }
        }
        i++;
        return sb.ToString();
    }
}
