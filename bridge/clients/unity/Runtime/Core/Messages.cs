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
                case "event": return new GameEvent();
                case "state": return new State();
                case "declare": return new Declare();
                case "cancel": return new Cancel();
                case "reset": return new Reset();
                case "ping": return new Ping();
                case "lore.query": return new LoreQuery();
                case "lore.explain": return new LoreExplain();
                case "generate": return new Generate();
                case "ready": return new Ready();
                case "chunk": return new Chunk();
                case "action": return new NpcAction();
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

        /// <summary>Game state as the protocol carries it (<c>state.set</c>, <c>say.state</c>, <c>event.state</c>): a map of
        /// key -> bool, integer, float or string, in the dictionary's order. A C# float is sent as the float64 of its shortest
        /// decimal form (0.1f -> 0.1), as the protocol's floats are float64. Null: null (the field is left out).</summary>
        /// <exception cref="ArgumentException">a null key, or a value of another type (a map, a list, null...).</exception>
        internal static MsgMap StateMap(IDictionary<string, object> values, string field)
        {
            if (values == null) return null;
            var m = new MsgMap();
            foreach (var kv in values)
            {
                if (kv.Key == null) throw new ArgumentException(field + ": a state key is null");
                object v = Tree(kv.Value, field + "." + kv.Key);
                if (!(v is bool || v is long || v is ulong || v is double || v is string))
                    throw new ArgumentException(string.Format("{0}.{1}: a state value is a bool, int, float or string, got {2}", field, kv.Key, MsgPack.TypeName(v)));
                m[kv.Key] = v;
            }
            return m;
        }

        /// <summary>A value tree (JSON Schema, action arguments) as the protocol carries it: maps (MsgMap or any IDictionary with
        /// string keys) become MsgMaps in their order, lists and arrays become lists, integers long, float -> float64 (see
        /// <see cref="StateMap"/>); bool, string, double and null stay.</summary>
        /// <exception cref="ArgumentException">a non-string map key or a value msgpack cannot carry; the message names where.</exception>
        internal static object Tree(object v, string path)
        {
            if (v == null || v is string || v is bool || v is double || v is long || v is ulong || v is byte[]) return v;
            if (v is int) return (long)(int)v;
            if (v is short) return (long)(short)v;
            if (v is sbyte) return (long)(sbyte)v;
            if (v is byte) return (long)(byte)v;
            if (v is ushort) return (long)(ushort)v;
            if (v is uint) return (long)(uint)v;
            if (v is float)
                return double.Parse(((float)v).ToString("R", System.Globalization.CultureInfo.InvariantCulture), System.Globalization.CultureInfo.InvariantCulture);
            var mm = v as MsgMap;
            if (mm != null)
            {
                var copy = new MsgMap();
                foreach (var kv in mm) copy[kv.Key] = Tree(kv.Value, path + "." + kv.Key);
                return copy;
            }
            var dict = v as System.Collections.IDictionary;
            if (dict != null)
            {
                var copy = new MsgMap();
                foreach (System.Collections.DictionaryEntry kv in dict)
                {
                    var key = kv.Key as string;
                    if (key == null) throw new ArgumentException(path + ": map keys must be strings");
                    copy[key] = Tree(kv.Value, path + "." + key);
                }
                return copy;
            }
            var list = v as System.Collections.IList;
            if (list != null)
            {
                var copy = new List<object>(list.Count);
                for (int i = 0; i < list.Count; i++) copy.Add(Tree(list[i], path + "[" + i + "]"));
                return copy;
            }
            throw new ArgumentException(path + ": cannot send a " + v.GetType().FullName);
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

    /// <summary>A player's line to an NPC; answered by <see cref="Chunk"/>*, then <see cref="NpcAction"/>* (when the NPC has a
    /// declaration), then exactly one <see cref="Done"/>, or one error.</summary>
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
        /// <summary>Game state merged into the session's before this turn, as a <c>state</c> message would
        /// (key -> bool, int, float or string; see <see cref="SayOptions.State"/>).</summary>
        public MsgMap State;

        protected override void WriteFields(MsgMap m)
        {
            m.Put("npc", Npc).Put("text", Text).Put("session", Session).Put("max_tokens", MaxTokens).Put("temperature", Temperature).Put("seed", Seed)
                .Put("state", State);
        }

        protected override void ReadFields(MsgMap m)
        {
            Npc = m.GetString("npc"); Text = m.GetString("text"); Session = m.GetString("session");
            MaxTokens = m.GetLongOrNull("max_tokens"); Temperature = m.GetDoubleOrNull("temperature"); Seed = m.GetLongOrNull("seed");
            State = m.GetMap("state");
        }
    }

    /// <summary>Something happened in the game that NPCs should know (the wire type <c>event</c>; named so as not to clash
    /// with the engine's Event class). Answered by <see cref="Ok"/> whose <see cref="Ok.Count"/> is how many NPCs it reached; it
    /// enters each one's next turn. Target: at most one of <see cref="Npc"/>, <see cref="Npcs"/>, <see cref="Location"/>,
    /// <see cref="Faction"/>; none: every NPC.</summary>
    public sealed class GameEvent : Message
    {
        public override string Type { get { return "event"; } }
        /// <summary>What happened, in words (1..1000 chars): "The player paid Odile ten silver marks."</summary>
        public string Text;
        /// <summary>Conversation key, as in <see cref="Say.Session"/>.</summary>
        public string Session;
        /// <summary>One NPC id.</summary>
        public string Npc;
        /// <summary>Several NPC ids (1..64).</summary>
        public List<string> Npcs;
        /// <summary>Lore entry id of a place: the NPCs whose card names it.</summary>
        public string Location;
        /// <summary>Lore entry id of a faction: the NPCs whose card names it.</summary>
        public string Faction;
        /// <summary>Game state merged into the session's with the event.</summary>
        public MsgMap State;

        protected override void WriteFields(MsgMap m)
        {
            m.Put("text", Text).Put("session", Session).Put("npc", Npc).Put("npcs", Npcs == null ? null : Strings(Npcs))
                .Put("location", Location).Put("faction", Faction).Put("state", State);
        }

        protected override void ReadFields(MsgMap m)
        {
            Text = m.GetString("text"); Session = m.GetString("session"); Npc = m.GetString("npc");
            Npcs = m.GetArray("npcs") == null ? null : m.GetStringList("npcs");
            Location = m.GetString("location"); Faction = m.GetString("faction"); State = m.GetMap("state");
        }
    }

    /// <summary>Game state (flags, counters) of a session: <see cref="Set"/> is merged in, then the <see cref="Unset"/> keys are
    /// removed. Answered by <see cref="Ok"/>. Keys: 1..64 of <c>A-Z a-z 0-9 _ . -</c>; values: bool, int, float or string
    /// (at most 256 chars). Lore entries' <c>when:</c> conditions read it.</summary>
    public sealed class State : Message
    {
        public override string Type { get { return "state"; } }
        public string Session;
        public MsgMap Set = new MsgMap();
        public List<string> Unset = new List<string>();

        protected override void WriteFields(MsgMap m)
        {
            m.Put("session", Session).Put("set", Set ?? new MsgMap()).Put("unset", Strings(Unset));
        }

        protected override void ReadFields(MsgMap m)
        {
            Session = m.GetString("session"); Set = m.GetMap("set") ?? new MsgMap(); Unset = m.GetStringList("unset");
        }
    }

    /// <summary>One game action an NPC may take: a name (<c>[A-Za-z_][A-Za-z0-9_]*</c>, at most 64 chars), what it does (for
    /// the model), and the JSON Schema of its arguments: an object of string / integer / number / boolean properties with
    /// <c>enum</c>, <c>const</c>, <c>minimum</c>/<c>maximum</c>, <c>minLength</c>/<c>maxLength</c>, <c>pattern</c>,
    /// <c>required</c> (PROTOCOL.md, "Game events, state and NPC actions"; anything else gets
    /// <see cref="UnsupportedSchemaException"/>).</summary>
    public sealed class ActionSpec
    {
        public string Name = "";
        public string Description = "";
        /// <summary>JSON Schema of the arguments object; null: no arguments (the sidecar's default).</summary>
        public MsgMap Parameters;

        public ActionSpec() { }

        public ActionSpec(string name, string description, MsgMap parameters = null)
        {
            Name = name; Description = description ?? ""; Parameters = parameters;
        }

        internal static ActionSpec FromMap(MsgMap m)
        {
            return new ActionSpec { Name = m.GetString("name", ""), Description = m.GetString("description", ""), Parameters = m.GetMap("parameters") };
        }

        internal MsgMap ToMap()
        {
            return new MsgMap().Put("name", Name).Put("description", Description ?? "").Put("parameters", Parameters);
        }
    }

    /// <summary>A per-line field the game wants with every line (e.g. <c>emotion</c> for the animation): one of
    /// <see cref="Enum"/> comes back in <see cref="Done.Fields"/>.</summary>
    public sealed class FieldSpec
    {
        /// <summary>The values it may take (1..32, each 1..64 chars).</summary>
        public List<string> Enum = new List<string>();
        /// <summary>What it means, for the model (at most 300 chars).</summary>
        public string Description = "";

        public FieldSpec() { }

        public FieldSpec(params string[] values) { Enum = new List<string>(values); }

        internal static FieldSpec FromMap(MsgMap m)
        {
            return new FieldSpec { Enum = m.GetStringList("enum"), Description = m.GetString("description", "") };
        }

        internal MsgMap ToMap() { return new MsgMap().Put("enum", Message.Strings(Enum)).Put("description", Description ?? ""); }
    }

    /// <summary>Declares the actions and per-line fields of one NPC (<see cref="Npc"/>) or of every NPC (no Npc) in a session;
    /// answered by <see cref="Ok"/>, or <see cref="UnsupportedSchemaException"/> / <see cref="UnknownNpcException"/>. Replaces
    /// the earlier declaration of that scope (an NPC's own wins over the session's); empty Actions and Fields remove it.
    /// Declare before the first say of a session (a later change re-decodes that conversation once).</summary>
    public sealed class Declare : Message
    {
        public override string Type { get { return "declare"; } }
        public string Session;
        public string Npc;
        /// <summary>Up to 32 actions.</summary>
        public List<ActionSpec> Actions = new List<ActionSpec>();
        /// <summary>Up to 8 fields, name -> its values.</summary>
        public Dictionary<string, FieldSpec> Fields = new Dictionary<string, FieldSpec>();
        /// <summary>Actions one line may end with (0..4).</summary>
        public long MaxActions = 1;

        protected override void WriteFields(MsgMap m)
        {
            var actions = new List<object>();
            if (Actions != null) foreach (var a in Actions) actions.Add(a.ToMap());
            var fields = new MsgMap();
            if (Fields != null) foreach (var kv in Fields) fields[kv.Key] = kv.Value.ToMap();
            m.Put("session", Session).Put("npc", Npc).Put("actions", actions).Put("fields", fields).Put("max_actions", MaxActions);
        }

        protected override void ReadFields(MsgMap m)
        {
            Session = m.GetString("session"); Npc = m.GetString("npc"); MaxActions = m.GetLong("max_actions", 1);
            Actions = new List<ActionSpec>();
            var a = m.GetArray("actions");
            if (a != null)
                foreach (var x in a)
                {
                    var am = x as MsgMap;
                    if (am == null) throw new MsgPackException("field 'actions': expected maps, got " + MsgPack.TypeName(x));
                    Actions.Add(ActionSpec.FromMap(am));
                }
            Fields = new Dictionary<string, FieldSpec>(StringComparer.Ordinal);
            var f = m.GetMap("fields");
            if (f != null)
                foreach (var kv in f)
                {
                    var fm = kv.Value as MsgMap;
                    if (fm == null) throw new MsgPackException("field 'fields." + kv.Key + "': expected a map, got " + MsgPack.TypeName(kv.Value));
                    Fields[kv.Key] = FieldSpec.FromMap(fm);
                }
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

    /// <summary>A game action the NPC takes at the end of its line (the wire type <c>action</c>; named so as not to clash with
    /// System.Action): after the last <see cref="Chunk"/>, before <see cref="Done"/>, <see cref="Seq"/> from 0 within the turn.
    /// <see cref="Name"/> is a declared action and <see cref="Args"/> validates against its declared schema (the sidecar checks
    /// before sending; invalid calls are never sent, they are listed in <see cref="Done.Rejected"/>).</summary>
    public sealed class NpcAction : Message
    {
        public override string Type { get { return "action"; } }
        public long Seq;
        public string Name = "";
        /// <summary>The arguments: name -> string, long, double or bool, as the declared schema says.</summary>
        public MsgMap Args = new MsgMap();
        protected override void WriteFields(MsgMap m) { m.Put("seq", Seq).Put("name", Name).Put("args", Args ?? new MsgMap()); }
        protected override void ReadFields(MsgMap m) { Seq = m.GetLong("seq"); Name = m.GetString("name", ""); Args = m.GetMap("args") ?? new MsgMap(); }
        public override string ToString() { return "action(" + Id + " " + Seq + " " + Name + ")"; }
    }

    /// <summary>An action the model wrote that failed validation and was never sent (<see cref="Done.Rejected"/>).</summary>
    public sealed class RejectedAction
    {
        public string Name = "";
        /// <summary>Why, in words.</summary>
        public string Reason = "";
    }

    /// <summary>Ends a say stream. FinishReason: <c>stop</c>, <c>length</c> (max_tokens), <c>cancelled</c>, <c>error</c>.
    /// Tokens: <c>prompt</c>, <c>cached</c>, <c>completion</c>. Timings (ms, as float64): <c>ttft_ms</c> (request received
    /// by the sidecar -> first token), <c>total_ms</c>, <c>tokens_per_s</c>. With a declaration (<see cref="Declare"/>):
    /// <see cref="Fields"/>, <see cref="ActionCount"/>, <see cref="Rejected"/>; and <see cref="Actions"/>, the turn's
    /// <see cref="NpcAction"/> messages, filled in by the client.</summary>
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
        /// <summary>The declared per-line fields: name -> one of its enum values (e.g. <c>emotion</c> -> <c>warm</c>); null when the
        /// NPC has no declaration.</summary>
        public Dictionary<string, string> Fields;
        /// <summary>The wire's <c>actions</c>: how many <see cref="NpcAction"/> messages this turn sent; null when the NPC has no declaration.</summary>
        public long? ActionCount;
        /// <summary>Actions the model wrote that failed validation and were never sent; null when none.</summary>
        public List<RejectedAction> Rejected;
        /// <summary>Oldest turns of the conversation dropped by this turn to fit its context (the NPC no longer remembers them); null when none.</summary>
        public long? ForgottenTurns;
        /// <summary>Not on the wire: the <see cref="NpcAction"/> messages of this turn, in seq order, as the client received them
        /// before this done (empty when none). A done decoded on its own has none.</summary>
        public List<NpcAction> Actions = new List<NpcAction>();

        public bool Cancelled { get { return FinishReason == "cancelled"; } }

        protected override void WriteFields(MsgMap m)
        {
            List<object> rejected = null;
            if (Rejected != null)
            {
                rejected = new List<object>();
                foreach (var r in Rejected) rejected.Add(new MsgMap().Put("name", r.Name).Put("reason", r.Reason));
            }
            m.Put("finish_reason", FinishReason).Put("text", Text).Put("lore", Strings(Lore)).Put("tokens", MapOf(Tokens)).Put("timings", MapOf(Timings))
                .Put("fields", Fields == null ? null : MapOf(Fields)).Put("actions", ActionCount).Put("rejected", rejected).Put("forgotten_turns", ForgottenTurns);
        }

        protected override void ReadFields(MsgMap m)
        {
            FinishReason = m.GetString("finish_reason", ""); Text = m.GetString("text", ""); Lore = m.GetStringList("lore");
            Tokens = m.GetLongMap("tokens"); Timings = m.GetDoubleMap("timings");
            Fields = m.GetMap("fields") == null ? null : m.GetStringMap("fields");
            ActionCount = m.GetLongOrNull("actions");
            ForgottenTurns = m.GetLongOrNull("forgotten_turns");
            Rejected = null;
            var a = m.GetArray("rejected");
            if (a != null)
            {
                Rejected = new List<RejectedAction>();
                foreach (var x in a)
                {
                    var rm = x as MsgMap;
                    if (rm == null) throw new MsgPackException("field 'rejected': expected maps, got " + MsgPack.TypeName(x));
                    Rejected.Add(new RejectedAction { Name = rm.GetString("name", ""), Reason = rm.GetString("reason", "") });
                }
            }
        }
    }

    public sealed class Pong : Message
    {
        public override string Type { get { return "pong"; } }
    }

    /// <summary>Plain success (answer to <see cref="Reset"/>, <see cref="GameEvent"/>, <see cref="State"/>, <see cref="Declare"/>).</summary>
    public sealed class Ok : Message
    {
        public override string Type { get { return "ok"; } }
        /// <summary>For a <see cref="GameEvent"/>: how many NPCs it reached; null otherwise.</summary>
        public long? Count;
        protected override void WriteFields(MsgMap m) { m.Put("count", Count); }
        protected override void ReadFields(MsgMap m) { Count = m.GetLongOrNull("count"); }
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
        /// <summary>With code <c>busy</c>: wait at least this long (ms) before sending the request again; null when absent.</summary>
        public long? RetryAfterMs;
        protected override void WriteFields(MsgMap m) { m.Put("code", Code).Put("message", Text).Put("retry_after_ms", RetryAfterMs); }
        protected override void ReadFields(MsgMap m)
        {
            Code = m.GetString("code", ""); Text = m.GetString("message", ""); RetryAfterMs = m.GetLongOrNull("retry_after_ms");
        }
    }
}
