// Typed messages of the sidecar protocol (version 1), mirroring bridge/protocol.py; the wire spec with byte-exact
// examples is bridge/PROTOCOL.md. Each message is one msgpack map with string keys
// (https://github.com/msgpack/msgpack/blob/master/spec.md): v, id, type, then the fields in the order the sidecar
// writes them; fields with no value (null) are left out. Unknown extra fields are ignored (and kept in Raw);
// an unknown type decodes to UnknownMessage instead of failing.

using System;
using System.Collections.Generic;

namespace Narrative.Sidecar
{
    /// <summary>Base of every protocol message. Build requests with the subclasses; decode with <see cref="Decode"/>.</summary>
    public abstract class Message
    {
        /// <summary>The protocol version this client speaks (the <c>v</c> field).</summary>
        public const long ProtocolVersion = 1;

        /// <summary>Protocol version (<c>v</c>).</summary>
        public long V = ProtocolVersion;

        /// <summary>Request id (1..128 chars, unique per connection while in flight); replies carry the id they answer,
        /// events carry <c>ev-&lt;n&gt;</c>, errors about unreadable frames <c>"?"</c>.</summary>
        public string Id = "";

        /// <summary>The <c>type</c> field, e.g. <c>say</c> or <c>lore.result</c>.</summary>
        public abstract string Type { get; }

        /// <summary>The whole decoded map, unknown fields included (null for a message built in code).</summary>
        public MsgMap Raw { get; private set; }

        /// <summary>True for messages the sidecar pushes unasked (<c>lore.changed</c>, <c>lore.error</c>, ids <c>ev-&lt;n&gt;</c>).</summary>
        public virtual bool IsEvent { get { return Id != null && Id.StartsWith("ev-", StringComparison.Ordinal); } }

        /// <summary>The message as a msgpack map: v, id, type, then the fields in the sidecar's order, nulls left out.</summary>
        public MsgMap ToMap()
        {
            var m = new MsgMap();
            m["v"] = V;
            m["id"] = Id;
            m["type"] = Type;
            WriteFields(m);
            return m;
        }

        /// <summary>The message as one msgpack frame.</summary>
        public byte[] Encode() { return MsgPack.Encode(ToMap()); }

        protected virtual void WriteFields(MsgMap m) { }
        protected virtual void ReadFields(MsgMap m) { }

        /// <summary>One frame -> a typed message (an <see cref="UnknownMessage"/> for a type this client does not know).</summary>
        /// <exception cref="MsgPackException">not msgpack, not a map, no string <c>type</c>, or a known field of the wrong type.</exception>
        public static Message Decode(byte[] payload)
        {
            return FromMap(MsgPack.DecodeMap(payload));
        }

        /// <summary>A decoded map -> a typed message. See <see cref="Decode"/>.</summary>
        public static Message FromMap(MsgMap map)
        {
            string type = map.GetString("type");
            if (type == null) throw new MsgPackException("field 'type': required string");
            Message msg = Create(type);
            msg.V = map.GetLong("v", ProtocolVersion);
            msg.Id = map.GetString("id", "");
            msg.Raw = map;
            msg.ReadFields(map);
            return msg;
        }

        static Message Create(string type)
        {
            switch (type)
            {
                case "hello": return new Hello();
                case "say": return new Say();
                case "cancel": return new Cancel();
                case "reset": return new Reset();
                case "ping": return new Ping();
                case "lore.query": return new LoreQuery();
                case "lore.explain": return new LoreExplain();
                case "generate": return new Generate();
                case "ready": return new Ready();
                case "chunk": return new Chunk();
                case "done": return new Done();
                case "pong": return new Pong();
                case "ok": return new Ok();
                case "lore.result": return new LoreResult();
                case "lore.explanation": return new LoreExplanation();
                case "lore.changed": return new LoreChanged();
                case "lore.error": return new LoreFileError();
                case "shutdown": return new Shutdown();
                case "generate.result": return new GenerateResult();
                case "error": return new ErrorMessage();
                default: return new UnknownMessage(type);
            }
        }

        public override string ToString() { return Type + "(" + Id + ")"; }

        // helpers for subclasses
        internal static List<object> Strings(List<string> xs)
        {
            var l = new List<object>();
            if (xs != null) foreach (var x in xs) l.Add(x);
            return l;
        }

        internal static MsgMap MapOf<T>(Dictionary<string, T> d)
        {
            var m = new MsgMap();
            if (d != null) foreach (var kv in d) m[kv.Key] = kv.Value;
            return m;
        }
    }

    /// <summary>A message of a type this client does not know (a newer sidecar); its fields are in <see cref="Message.Raw"/>.</summary>
    public sealed class UnknownMessage : Message
    {
        readonly string _type;
        public UnknownMessage(string type) { _type = type; }
        public override string Type { get { return _type; } }
        protected override void WriteFields(MsgMap m)
        {
            if (Raw == null) return;
            foreach (var kv in Raw) if (kv.Key != "v" && kv.Key != "id" && kv.Key != "type") m[kv.Key] = kv.Value;
        }
    }

    // ---- client -> server ---------------------------------------------------------------------------------------

    /// <summary>Opens a session; answered by <see cref="Ready"/>.</summary>
    public sealed class Hello : Message
    {
        public override string Type { get { return "hello"; } }
        /// <summary>Free-form client name, for the sidecar's logs (max 128 chars).</summary>
        public string Client = "";
        protected override void WriteFields(MsgMap m) { m.Put("client", Client); }
        protected override void ReadFields(MsgMap m) { Client = m.GetString("client", ""); }
    }

    /// <summary>A player's line to an NPC; answered by <see cref="Chunk"/>* then exactly one <see cref="Done"/>, or one error.</summary>
    public sealed class Say : Message
    {
        public override string Type { get { return "say"; } }
        /// <summary>NPC entry id, as in the lore files (e.g. <c>odile-brask</c>).</summary>
        public string Npc;
        /// <summary>What the player says (1..4000 chars). Player text is data: it is sent as is, never interpreted.</summary>
        public string Text;
        /// <summary>Conversation key (e.g. a save-game id); null: the connection, so a reconnect starts afresh.</summary>
        public string Session;
        /// <summary>Upper bound on generated tokens (1..4096).</summary>
        public long? MaxTokens;
        /// <summary>Sampling temperature (0..2).</summary>
        public double? Temperature;
        /// <summary>Sampling seed, for reproducible lines.</summary>
        public long? Seed;

        protected override void WriteFields(MsgMap m)
        {
            m.Put("npc", Npc).Put("text", Text).Put("session", Session).Put("max_tokens", MaxTokens).Put("temperature", Temperature).Put("seed", Seed);
        }

        protected override void ReadFields(MsgMap m)
        {
            Npc = m.GetString("npc"); Text = m.GetString("text"); Session = m.GetString("session");
            MaxTokens = m.GetLongOrNull("max_tokens"); Temperature = m.GetDoubleOrNull("temperature"); Seed = m.GetLongOrNull("seed");
        }
    }

    /// <summary>Stops the stream of request <see cref="Target"/>; that stream ends with <see cref="Done"/> (finish_reason <c>cancelled</c>).
    /// No reply of its own; an unknown or finished target gets error <c>unknown_request</c>.</summary>
    public sealed class Cancel : Message
    {
        public override string Type { get { return "cancel"; } }
        public string Target;
        protected override void WriteFields(MsgMap m) { m.Put("target", Target); }
        protected override void ReadFields(MsgMap m) { Target = m.GetString("target"); }
    }

    /// <summary>Forgets one conversation's history; answered by <see cref="Ok"/>.</summary>
    public sealed class Reset : Message
    {
        public override string Type { get { return "reset"; } }
        public string Npc;
        public string Session;
        protected override void WriteFields(MsgMap m) { m.Put("npc", Npc).Put("session", Session); }
        protected override void ReadFields(MsgMap m) { Npc = m.GetString("npc"); Session = m.GetString("session"); }
    }

    /// <summary>Liveness probe; answered by <see cref="Pong"/> at once, even while a model decodes.</summary>
    public sealed class Ping : Message
    {
        public override string Type { get { return "ping"; } }
    }

    /// <summary>Which lore entries a line would retrieve (with <see cref="Npc"/>: that NPC's scope and budget); answered by <see cref="LoreResult"/>.</summary>
    public sealed class LoreQuery : Message
    {
        public override string Type { get { return "lore.query"; } }
        public string Text;
        public string Npc;
        protected override void WriteFields(MsgMap m) { m.Put("text", Text).Put("npc", Npc); }
        protected override void ReadFields(MsgMap m) { Text = m.GetString("text"); Npc = m.GetString("npc"); }
    }

    /// <summary>Why each lore entry is (or is not) in one turn; answered by <see cref="LoreExplanation"/>.</summary>
    public sealed class LoreExplain : Message
    {
        public override string Type { get { return "lore.explain"; } }
        public string Npc;
        public string Text;
        /// <summary>Earlier lines, oldest first (max 64), scanned for keys.</summary>
        public List<string> History = new List<string>();
        protected override void WriteFields(MsgMap m) { m.Put("npc", Npc).Put("text", Text).Put("history", Strings(History)); }
        protected override void ReadFields(MsgMap m) { Npc = m.GetString("npc"); Text = m.GetString("text"); History = m.GetStringList("history"); }
    }

    /// <summary>A one-off content job: one quest from a spec id (<see cref="Quest"/>) or an inline spec map (<see cref="Spec"/>);
    /// answered by <see cref="GenerateResult"/> or an error (unknown_quest, invalid, generation_failed).</summary>
    public sealed class Generate : Message
    {
        public override string Type { get { return "generate"; } }
        /// <summary>What to generate; only <c>quest</c> for now.</summary>
        public string Kind = "quest";
        /// <summary>A spec id in the sidecar's quest folder (exactly one of Quest and Spec).</summary>
        public string Quest;
        /// <summary>An inline spec (the YAML fields as a map).</summary>
        public MsgMap Spec;
        public long? Seed;
        /// <summary>16..8192.</summary>
        public long? MaxTokens;

        protected override void WriteFields(MsgMap m)
        {
            m.Put("kind", Kind).Put("quest", Quest).Put("spec", Spec).Put("seed", Seed).Put("max_tokens", MaxTokens);
        }

        protected override void ReadFields(MsgMap m)
        {
            Kind = m.GetString("kind", "quest"); Quest = m.GetString("quest"); Spec = m.GetMap("spec");
            Seed = m.GetLongOrNull("seed"); MaxTokens = m.GetLongOrNull("max_tokens");
        }
    }

    // ---- server -> client ---------------------------------------------------------------------------------------

    /// <summary>Answer to <see cref="Hello"/>: server name, models (role -> file), NPC ids, limits
    /// (<c>max_frame_bytes</c>: largest request answered; <c>max_tokens</c>; <c>n_ctx</c>: context window in tokens).</summary>
    public sealed class Ready : Message
    {
        public override string Type { get { return "ready"; } }
        public string Server = "";
        public Dictionary<string, string> Models = new Dictionary<string, string>();
        public List<string> Npcs = new List<string>();
        public Dictionary<string, long> Limits = new Dictionary<string, long>();

        /// <summary>limits.max_frame_bytes, or 65536 (the documented default) when absent.</summary>
        public long MaxFrameBytes { get { long v; return Limits.TryGetValue("max_frame_bytes", out v) ? v : 64 * 1024; } }

        protected override void WriteFields(MsgMap m)
        {
            m.Put("server", Server).Put("models", MapOf(Models)).Put("npcs", Strings(Npcs)).Put("limits", MapOf(Limits));
        }

        protected override void ReadFields(MsgMap m)
        {
            Server = m.GetString("server", ""); Models = m.GetStringMap("models"); Npcs = m.GetStringList("npcs"); Limits = m.GetLongMap("limits");
        }
    }

    /// <summary>A piece of an NPC's line as it is generated; <see cref="Seq"/> counts from 0 per request.</summary>
    public sealed class Chunk : Message
    {
        public override string Type { get { return "chunk"; } }
        public long Seq;
        public string Text = "";
        protected override void WriteFields(MsgMap m) { m.Put("seq", Seq).Put("text", Text); }
        protected override void ReadFields(MsgMap m) { Seq = m.GetLong("seq"); Text = m.GetString("text", ""); }
    }

    /// <summary>Ends a say stream. FinishReason: <c>stop</c>, <c>length</c> (max_tokens), <c>cancelled</c>, <c>error</c>.
    /// Tokens: <c>prompt</c>, <c>cached</c>, <c>completion</c>. Timings (ms, as float64): <c>ttft_ms</c> (request received
    /// by the sidecar -> first token), <c>total_ms</c>, <c>tokens_per_s</c>.</summary>
    public sealed class Done : Message
    {
        public override string Type { get { return "done"; } }
        public string FinishReason = "";
        /// <summary>The whole line.</summary>
        public string Text = "";
        /// <summary>Ids of the lore entries in the prompt for this turn.</summary>
        public List<string> Lore = new List<string>();
        public Dictionary<string, long> Tokens = new Dictionary<string, long>();
        public Dictionary<string, double> Timings = new Dictionary<string, double>();

        public bool Cancelled { get { return FinishReason == "cancelled"; } }

        protected override void WriteFields(MsgMap m)
        {
            m.Put("finish_reason", FinishReason).Put("text", Text).Put("lore", Strings(Lore)).Put("tokens", MapOf(Tokens)).Put("timings", MapOf(Timings));
        }

        protected override void ReadFields(MsgMap m)
        {
            FinishReason = m.GetString("finish_reason", ""); Text = m.GetString("text", ""); Lore = m.GetStringList("lore");
            Tokens = m.GetLongMap("tokens"); Timings = m.GetDoubleMap("timings");
        }
    }

    public sealed class Pong : Message
    {
        public override string Type { get { return "pong"; } }
    }

    /// <summary>Plain success (answer to <see cref="Reset"/>).</summary>
    public sealed class Ok : Message
    {
        public override string Type { get { return "ok"; } }
    }

    /// <summary>One entry of a <see cref="LoreResult"/>. Why: <c>card</c>, <c>scene</c>, <c>constant</c>, <c>prefix</c>,
    /// <c>key:&lt;key&gt;</c> or <c>vector:&lt;similarity&gt;</c>; Tokens: the entry's cost in the dialogue model's tokens.</summary>
    public sealed class LoreHit
    {
        public string Entry = "", Name = "", Kind = "", Why = "";
        public double Score;
        public long Tokens;

        internal static LoreHit FromMap(MsgMap m)
        {
            return new LoreHit
            {
                Entry = m.GetString("entry", ""), Name = m.GetString("name", ""), Kind = m.GetString("kind", ""),
                Score = m.GetDouble("score"), Why = m.GetString("why", ""), Tokens = m.GetLong("tokens"),
            };
        }

        internal MsgMap ToMap()
        {
            return new MsgMap().Put("entry", Entry).Put("name", Name).Put("kind", Kind).Put("score", Score).Put("why", Why).Put("tokens", Tokens);
        }
    }

    public sealed class LoreResult : Message
    {
        public override string Type { get { return "lore.result"; } }
        public List<LoreHit> Entries = new List<LoreHit>();

        protected override void WriteFields(MsgMap m)
        {
            var l = new List<object>();
            foreach (var e in Entries) l.Add(e.ToMap());
            m.Put("entries", l);
        }

        protected override void ReadFields(MsgMap m)
        {
            Entries = new List<LoreHit>();
            var a = m.GetArray("entries");
            if (a == null) return;
            foreach (var x in a)
            {
                var em = x as MsgMap;
                if (em == null) throw new MsgPackException("field 'entries': expected maps, got " + MsgPack.TypeName(x));
                Entries.Add(LoreHit.FromMap(em));
            }
        }
    }

    /// <summary>One entry of a <see cref="LoreExplanation"/> (see bridge/protocol.py LoreWhy for every value).</summary>
    public sealed class LoreWhy
    {
        public string Entry = "", Name = "", Kind = "", Placement = "", Why = "", Reason = "", FoundIn = "", Source = "";
        public long Tokens;
        public string Key;
        public double? Similarity, Lexical;
        public long? FullTokens;

        internal static LoreWhy FromMap(MsgMap m)
        {
            return new LoreWhy
            {
                Entry = m.GetString("entry", ""), Name = m.GetString("name", ""), Kind = m.GetString("kind", ""),
                Placement = m.GetString("placement", ""), Why = m.GetString("why", ""), Reason = m.GetString("reason", ""),
                Tokens = m.GetLong("tokens"), Key = m.GetString("key"), Similarity = m.GetDoubleOrNull("similarity"),
                Lexical = m.GetDoubleOrNull("lexical"), FoundIn = m.GetString("found_in", ""), Source = m.GetString("source", ""),
                FullTokens = m.GetLongOrNull("full_tokens"),
            };
        }

        internal MsgMap ToMap()
        {
            return new MsgMap().Put("entry", Entry).Put("name", Name).Put("kind", Kind).Put("placement", Placement).Put("why", Why)
                .Put("reason", Reason).Put("tokens", Tokens).Put("key", Key).Put("similarity", Similarity).Put("lexical", Lexical)
                .Put("found_in", FoundIn).Put("source", Source).Put("full_tokens", FullTokens);
        }
    }

    /// <summary>Answer to <see cref="LoreExplain"/>. Token figures are the dialogue model's tokens.</summary>
    public sealed class LoreExplanation : Message
    {
        public override string Type { get { return "lore.explanation"; } }
        public string Npc = "";
        public long Budget, Used, PrefixBudget, PrefixUsed;
        public List<LoreWhy> Included = new List<LoreWhy>();
        public List<LoreWhy> Dropped = new List<LoreWhy>();

        protected override void WriteFields(MsgMap m)
        {
            m.Put("npc", Npc).Put("budget", Budget).Put("used", Used).Put("prefix_budget", PrefixBudget).Put("prefix_used", PrefixUsed)
                .Put("included", List(Included)).Put("dropped", List(Dropped));
        }

        protected override void ReadFields(MsgMap m)
        {
            Npc = m.GetString("npc", ""); Budget = m.GetLong("budget"); Used = m.GetLong("used");
            PrefixBudget = m.GetLong("prefix_budget"); PrefixUsed = m.GetLong("prefix_used");
            Included = Read(m, "included"); Dropped = Read(m, "dropped");
        }

        static List<object> List(List<LoreWhy> xs)
        {
            var l = new List<object>();
            foreach (var x in xs) l.Add(x.ToMap());
            return l;
        }

        static List<LoreWhy> Read(MsgMap m, string key)
        {
            var outList = new List<LoreWhy>();
            var a = m.GetArray(key);
            if (a == null) return outList;
            foreach (var x in a)
            {
                var em = x as MsgMap;
                if (em == null) throw new MsgPackException("field '" + key + "': expected maps, got " + MsgPack.TypeName(x));
                outList.Add(LoreWhy.FromMap(em));
            }
            return outList;
        }
    }

    /// <summary>Event (ids <c>ev-&lt;n&gt;</c>): lore files were re-indexed while serving (hot reload).</summary>
    public sealed class LoreChanged : Message
    {
        public override string Type { get { return "lore.changed"; } }
        public override bool IsEvent { get { return true; } }
        /// <summary>Relative to the lore folder.</summary>
        public List<string> Files = new List<string>();
        /// <summary>Lore entries in service after the change (NPC cards excluded).</summary>
        public long Entries;
        public long Added, Deleted;

        protected override void WriteFields(MsgMap m) { m.Put("files", Strings(Files)).Put("entries", Entries).Put("added", Added).Put("deleted", Deleted); }
        protected override void ReadFields(MsgMap m) { Files = m.GetStringList("files"); Entries = m.GetLong("entries"); Added = m.GetLong("added"); Deleted = m.GetLong("deleted"); }
    }

    /// <summary>Event: a saved lore file is broken; its last good version stays in service. Line is 1-based (0: whole file).</summary>
    public sealed class LoreFileError : Message
    {
        public override string Type { get { return "lore.error"; } }
        public override bool IsEvent { get { return true; } }
        public string Path = "";
        public long Line;
        public string Text = "";

        protected override void WriteFields(MsgMap m) { m.Put("path", Path).Put("line", Line).Put("message", Text); }
        protected override void ReadFields(MsgMap m) { Path = m.GetString("path", ""); Line = m.GetLong("line"); Text = m.GetString("message", ""); }
    }

    /// <summary>Event: the sidecar is going down; no reply follows for requests in flight (the client fails
    /// them at once as disconnected). Reason: <c>stopping</c> or <c>engine_failed</c> (see PROTOCOL.md).</summary>
    public sealed class Shutdown : Message
    {
        public override string Type { get { return "shutdown"; } }
        public override bool IsEvent { get { return true; } }
        public string Reason = "";
        public string Text = "";

        protected override void WriteFields(MsgMap m) { m.Put("reason", Reason).Put("message", Text); }
        protected override void ReadFields(MsgMap m) { Reason = m.GetString("reason", ""); Text = m.GetString("message", ""); }
    }

    /// <summary>A post-check finding of a generated quest. Severity: <c>error</c> or <c>warning</c>.</summary>
    public sealed class GenFinding
    {
        public string Field = "", Check = "", Severity = "", Text = "";
    }

    /// <summary>Answer to <see cref="Generate"/>. Status <c>ok</c> or <c>flagged</c>; Output: the quest as
    /// <c>narrative batch</c> writes it (id, title, summary, dialogue, journal, meta).</summary>
    public sealed class GenerateResult : Message
    {
        public override string Type { get { return "generate.result"; } }
        public string Status = "";
        public MsgMap Output = new MsgMap();
        public List<GenFinding> Findings = new List<GenFinding>();
        public long Attempts;
        public Dictionary<string, long> Tokens = new Dictionary<string, long>();
        public Dictionary<string, double> Timings = new Dictionary<string, double>();

        protected override void WriteFields(MsgMap m)
        {
            var f = new List<object>();
            foreach (var x in Findings) f.Add(new MsgMap().Put("field", x.Field).Put("check", x.Check).Put("severity", x.Severity).Put("message", x.Text));
            m.Put("status", Status).Put("output", Output).Put("findings", f).Put("attempts", Attempts).Put("tokens", MapOf(Tokens)).Put("timings", MapOf(Timings));
        }

        protected override void ReadFields(MsgMap m)
        {
            Status = m.GetString("status", ""); Output = m.GetMap("output") ?? new MsgMap(); Attempts = m.GetLong("attempts");
            Tokens = m.GetLongMap("tokens"); Timings = m.GetDoubleMap("timings");
            Findings = new List<GenFinding>();
            var a = m.GetArray("findings");
            if (a != null)
                foreach (var x in a)
                {
                    var fm = x as MsgMap;
                    if (fm == null) throw new MsgPackException("field 'findings': expected maps, got " + MsgPack.TypeName(x));
                    Findings.Add(new GenFinding { Field = fm.GetString("field", ""), Check = fm.GetString("check", ""), Severity = fm.GetString("severity", ""), Text = fm.GetString("message", "") });
                }
        }
    }

    /// <summary>A request failed. Code: see <see cref="ErrorCode"/>; Id: the request's id, or <c>"?"</c> when the frame could not be read.</summary>
    public sealed class ErrorMessage : Message
    {
        public override string Type { get { return "error"; } }
        public string Code = "";
        public string Text = "";
        protected override void WriteFields(MsgMap m) { m.Put("code", Code).Put("message", Text); }
        protected override void ReadFields(MsgMap m) { Code = m.GetString("code", ""); Text = m.GetString("message", ""); }
    }
}
