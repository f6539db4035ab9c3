// The msgpack subset the sidecar protocol needs, in plain C# (no reflection, no dynamic: IL2CPP/AOT safe).
//
// Spec: https://github.com/msgpack/msgpack/blob/master/spec.md
// Supported: nil, bool, int (positive/negative fixint, int8..int64, uint8..uint64), float32, float64,
// str (fixstr, str8, str16, str32; UTF-8), bin (bin8, bin16, bin32), array (fixarray, array16, array32),
// map (fixmap, map16, map32; string keys only, as bridge/PROTOCOL.md requires). Extension types are refused.

using System;
using System.Collections;
using System.Collections.Generic;
using System.Text;

namespace Narrative.Sidecar
{
    /// <summary>A msgpack payload that cannot be decoded (truncated, malformed, too deep, or a type this subset refuses),
    /// or a map field of the wrong type. The message says what and where (byte offset or field name).</summary>
    public class MsgPackException : FormatException
    {
        public MsgPackException(string message) : base(message) { }
    }

    /// <summary>A msgpack map with string keys that keeps insertion order, so a decoded map re-encodes byte for byte.
    /// Values are what <see cref="MsgPack.Decode"/> produces: null, bool, long, ulong (only above long.MaxValue),
    /// float (float32), double (float64), string, byte[] (bin), List&lt;object&gt; (array), MsgMap (map).</summary>
    public sealed class MsgMap : IEnumerable<KeyValuePair<string, object>>
    {
        readonly List<KeyValuePair<string, object>> _items = new List<KeyValuePair<string, object>>();
        readonly Dictionary<string, int> _index = new Dictionary<string, int>(StringComparer.Ordinal);

        public int Count { get { return _items.Count; } }

        /// <summary>The value of <paramref name="key"/>, or null when absent. Setting an existing key keeps its position.</summary>
        public object this[string key]
        {
            get { int i; return _index.TryGetValue(key, out i) ? _items[i].Value : null; }
            set
            {
                if (key == null) throw new ArgumentNullException("key");
                int i;
                if (_index.TryGetValue(key, out i)) _items[i] = new KeyValuePair<string, object>(key, value);
                else { _index[key] = _items.Count; _items.Add(new KeyValuePair<string, object>(key, value)); }
            }
        }

        /// <summary>Adds <paramref name="key"/> unless <paramref name="value"/> is null (the protocol leaves fields with no value out). Returns this.</summary>
        public MsgMap Put(string key, object value)
        {
            if (value != null) this[key] = value;
            return this;
        }

        public bool ContainsKey(string key) { return _index.ContainsKey(key); }

        public bool TryGetValue(string key, out object value)
        {
            int i;
            if (_index.TryGetValue(key, out i)) { value = _items[i].Value; return true; }
            value = null;
            return false;
        }

        public IEnumerable<string> Keys { get { foreach (var kv in _items) yield return kv.Key; } }

        public IEnumerator<KeyValuePair<string, object>> GetEnumerator() { return _items.GetEnumerator(); }
        IEnumerator IEnumerable.GetEnumerator() { return _items.GetEnumerator(); }

        // ---- typed getters: absent (or nil) -> the default; present but of another type -> MsgPackException naming the field

        public string GetString(string key, string dflt = null)
        {
            object v = this[key];
            if (v == null) return dflt;
            var s = v as string;
            if (s == null) throw WrongType(key, "str", v);
            return s;
        }

        public long GetLong(string key, long dflt = 0)
        {
            long? v = GetLongOrNull(key);
            return v ?? dflt;
        }

        public long? GetLongOrNull(string key)
        {
            object v = this[key];
            if (v == null) return null;
            if (v is long) return (long)v;
            if (v is ulong) throw new MsgPackException(string.Format("field '{0}': integer {1} does not fit in a signed 64-bit int", key, v));
            throw WrongType(key, "int", v);
        }

        /// <summary>A number as double; msgpack ints are accepted too (a float field may arrive as an int from other encoders).</summary>
        public double GetDouble(string key, double dflt = 0)
        {
            double? v = GetDoubleOrNull(key);
            return v ?? dflt;
        }

        public double? GetDoubleOrNull(string key)
        {
            object v = this[key];
            if (v == null) return null;
            if (v is double) return (double)v;
            if (v is float) return (float)v;
            if (v is long) return (long)v;
            if (v is ulong) return (ulong)v;
            throw WrongType(key, "float", v);
        }

        public bool GetBool(string key, bool dflt = false)
        {
            object v = this[key];
            if (v == null) return dflt;
            if (v is bool) return (bool)v;
            throw WrongType(key, "bool", v);
        }

        public MsgMap GetMap(string key)
        {
            object v = this[key];
            if (v == null) return null;
            var m = v as MsgMap;
            if (m == null) throw WrongType(key, "map", v);
            return m;
        }

        public List<object> GetArray(string key)
        {
            object v = this[key];
            if (v == null) return null;
            var a = v as List<object>;
            if (a == null) throw WrongType(key, "array", v);
            return a;
        }

        /// <summary>An array of strings (empty when absent).</summary>
        public List<string> GetStringList(string key)
        {
            var outList = new List<string>();
            var a = GetArray(key);
            if (a == null) return outList;
            for (int i = 0; i < a.Count; i++)
            {
                var s = a[i] as string;
                if (s == null) throw new MsgPackException(string.Format("field '{0}[{1}]': expected str, got {2}", key, i, MsgPack.TypeName(a[i])));
                outList.Add(s);
            }
            return outList;
        }

        /// <summary>A map of numbers (e.g. <c>timings</c>) as doubles (empty when absent).</summary>
        public Dictionary<string, double> GetDoubleMap(string key)
        {
            var outMap = new Dictionary<string, double>(StringComparer.Ordinal);
            var m = GetMap(key);
            if (m == null) return outMap;
            foreach (var kv in m)
            {
                double? d = m.GetDoubleOrNull(kv.Key);
                if (d.HasValue) outMap[kv.Key] = d.Value;
            }
            return outMap;
        }

        /// <summary>A map of ints (e.g. <c>tokens</c>, <c>limits</c>) (empty when absent).</summary>
        public Dictionary<string, long> GetLongMap(string key)
        {
            var outMap = new Dictionary<string, long>(StringComparer.Ordinal);
            var m = GetMap(key);
            if (m == null) return outMap;
            foreach (var kv in m)
            {
                long? l = m.GetLongOrNull(kv.Key);
                if (l.HasValue) outMap[kv.Key] = l.Value;
            }
            return outMap;
        }

        /// <summary>A map of strings (e.g. <c>models</c>) (empty when absent).</summary>
        public Dictionary<string, string> GetStringMap(string key)
        {
            var outMap = new Dictionary<string, string>(StringComparer.Ordinal);
            var m = GetMap(key);
            if (m == null) return outMap;
            foreach (var kv in m)
            {
                var s = m.GetString(kv.Key);
                if (s != null) outMap[kv.Key] = s;
            }
            return outMap;
        }

        static MsgPackException WrongType(string key, string expected, object got)
        {
            return new MsgPackException(string.Format("field '{0}': expected {1}, got {2}", key, expected, MsgPack.TypeName(got)));
        }
    }

    /// <summary>Encoder and decoder for the msgpack subset (https://github.com/msgpack/msgpack/blob/master/spec.md).
    /// Encoding picks the smallest representation, as msgpack-python does, so payloads match the sidecar's byte for byte.</summary>
    public static class MsgPack
    {
        /// <summary>Nesting depth <see cref="Decode"/> accepts by default (the protocol needs about 5).</summary>
        public const int DefaultMaxDepth = 32;

        static readonly UTF8Encoding StrictUtf8 = new UTF8Encoding(false, true);

        // ---- decoding ---------------------------------------------------------------------------------------

        /// <summary>Decodes exactly one msgpack value filling <paramref name="data"/>.</summary>
        /// <exception cref="MsgPackException">truncated or trailing bytes, an unknown or extension type byte, invalid UTF-8,
        /// a non-string map key, a declared length larger than the bytes left, or nesting deeper than <paramref name="maxDepth"/>.</exception>
        public static object Decode(byte[] data, int maxDepth = DefaultMaxDepth)
        {
            if (data == null) throw new ArgumentNullException("data");
            int pos = 0;
            object v = Read(data, ref pos, 0, maxDepth);
            if (pos != data.Length) throw new MsgPackException(string.Format("{0} trailing bytes after the value at offset {1}", data.Length - pos, pos));
            return v;
        }

        /// <summary>Decodes a payload that must be a map (every protocol message is one).</summary>
        public static MsgMap DecodeMap(byte[] data, int maxDepth = DefaultMaxDepth)
        {
            object v = Decode(data, maxDepth);
            var m = v as MsgMap;
            if (m == null) throw new MsgPackException("payload must be a msgpack map, got " + TypeName(v));
            return m;
        }

        static void Need(byte[] d, int pos, long n)
        {
            if (n < 0 || d.Length - pos < n)
                throw new MsgPackException(string.Format("truncated: need {0} bytes at offset {1}, {2} left", n, pos, d.Length - pos));
        }

        static ulong BigEndian(byte[] d, ref int pos, int n)
        {
            Need(d, pos, n);
            ulong v = 0;
            for (int i = 0; i < n; i++) v = (v << 8) | d[pos + i];
            pos += n;
            return v;
        }

        static object Read(byte[] d, ref int pos, int depth, int maxDepth)
        {
            if (depth > maxDepth) throw new MsgPackException(string.Format("nesting deeper than {0} at offset {1}", maxDepth, pos));
            Need(d, pos, 1);
            int at = pos;
            byte b = d[pos++];
            if (b <= 0x7f) return (long)b;                                  // positive fixint
            if (b >= 0xe0) return (long)(sbyte)b;                           // negative fixint
            if ((b & 0xf0) == 0x80) return ReadMap(d, ref pos, b & 0x0f, depth, maxDepth);
            if ((b & 0xf0) == 0x90) return ReadArray(d, ref pos, b & 0x0f, depth, maxDepth);
            if ((b & 0xe0) == 0xa0) return ReadStr(d, ref pos, b & 0x1f);
            switch (b)
            {
                case 0xc0: return null;
                case 0xc2: return false;
                case 0xc3: return true;
                case 0xc4: return ReadBin(d, ref pos, (long)BigEndian(d, ref pos, 1));
                case 0xc5: return ReadBin(d, ref pos, (long)BigEndian(d, ref pos, 2));
                case 0xc6: return ReadBin(d, ref pos, (long)BigEndian(d, ref pos, 4));
                case 0xca:
                {
                    uint bits = (uint)BigEndian(d, ref pos, 4);
                    return BitConverter.ToSingle(BitConverter.GetBytes(bits), 0);
                }
                case 0xcb: return BitConverter.Int64BitsToDouble((long)BigEndian(d, ref pos, 8));
                case 0xcc: return (long)BigEndian(d, ref pos, 1);
                case 0xcd: return (long)BigEndian(d, ref pos, 2);
                case 0xce: return (long)BigEndian(d, ref pos, 4);
                case 0xcf:
                {
                    ulong u = BigEndian(d, ref pos, 8);
                    if (u <= long.MaxValue) return (long)u;
                    return u;
                }
                case 0xd0: return (long)(sbyte)BigEndian(d, ref pos, 1);
                case 0xd1: return (long)(short)BigEndian(d, ref pos, 2);
                case 0xd2: return (long)(int)BigEndian(d, ref pos, 4);
                case 0xd3: return (long)BigEndian(d, ref pos, 8);
                case 0xd9: return ReadStr(d, ref pos, (long)BigEndian(d, ref pos, 1));
                case 0xda: return ReadStr(d, ref pos, (long)BigEndian(d, ref pos, 2));
                case 0xdb: return ReadStr(d, ref pos, (long)BigEndian(d, ref pos, 4));
                case 0xdc: return ReadArray(d, ref pos, (long)BigEndian(d, ref pos, 2), depth, maxDepth);
                case 0xdd: return ReadArray(d, ref pos, (long)BigEndian(d, ref pos, 4), depth, maxDepth);
                case 0xde: return ReadMap(d, ref pos, (long)BigEndian(d, ref pos, 2), depth, maxDepth);
                case 0xdf: return ReadMap(d, ref pos, (long)BigEndian(d, ref pos, 4), depth, maxDepth);
                case 0xc1:
                    throw new MsgPackException(string.Format("byte 0xc1 (never used) at offset {0}", at));
                default:  // 0xc7-0xc9 ext, 0xd4-0xd8 fixext
                    throw new MsgPackException(string.Format("extension type 0x{0:x2} at offset {1}: not part of the protocol", b, at));
            }
        }

        static string ReadStr(byte[] d, ref int pos, long n)
        {
            Need(d, pos, n);
            string s;
            try { s = StrictUtf8.GetString(d, pos, (int)n); }
            catch (ArgumentException) { throw new MsgPackException(string.Format("invalid UTF-8 in str at offset {0}", pos)); }
            pos += (int)n;
            return s;
        }

        static byte[] ReadBin(byte[] d, ref int pos, long n)
        {
            Need(d, pos, n);
            var b = new byte[n];
            Buffer.BlockCopy(d, pos, b, 0, (int)n);
            pos += (int)n;
            return b;
        }

        static List<object> ReadArray(byte[] d, ref int pos, long n, int depth, int maxDepth)
        {
            Need(d, pos, n); // every element takes at least one byte: refuse a huge count before allocating
            var a = new List<object>((int)n);
            for (long i = 0; i < n; i++) a.Add(Read(d, ref pos, depth + 1, maxDepth));
            return a;
        }

        static MsgMap ReadMap(byte[] d, ref int pos, long n, int depth, int maxDepth)
        {
            Need(d, pos, n * 2);
            var m = new MsgMap();
            for (long i = 0; i < n; i++)
            {
                int at = pos;
                var key = Read(d, ref pos, depth + 1, maxDepth) as string;
                if (key == null) throw new MsgPackException(string.Format("map key at offset {0} is not a string", at));
                m[key] = Read(d, ref pos, depth + 1, maxDepth);  // a repeated key keeps the last value (as msgpack-python)
            }
            return m;
        }

        // ---- encoding ---------------------------------------------------------------------------------------

        /// <summary>Encodes a value tree: null, bool, integers (any CLR width), float, double, string, byte[],
        /// MsgMap, IDictionary&lt;string, *&gt; (its enumeration order), IList (arrays).</summary>
        /// <exception cref="ArgumentException">a value of another type, or nesting deeper than 64.</exception>
        public static byte[] Encode(object value)
        {
            var w = new Writer();
            Write(w, value, 0);
            return w.ToArray();
        }

        sealed class Writer
        {
            byte[] _buf = new byte[256];
            int _len;

            public void Reserve(int n)
            {
                if (_len + n <= _buf.Length) return;
                int size = Math.Max(_buf.Length * 2, _len + n);
                Array.Resize(ref _buf, size);
            }

            public void Byte(byte b) { Reserve(1); _buf[_len++] = b; }

            public void BigEndian(ulong v, int n)
            {
                Reserve(n);
                for (int i = n - 1; i >= 0; i--) { _buf[_len + i] = (byte)v; v >>= 8; }
                _len += n;
            }

            public void Bytes(byte[] b, int offset, int count)
            {
                Reserve(count);
                Buffer.BlockCopy(b, offset, _buf, _len, count);
                _len += count;
            }

            public byte[] ToArray()
            {
                var r = new byte[_len];
                Buffer.BlockCopy(_buf, 0, r, 0, _len);
                return r;
            }
        }

        static void Write(Writer w, object v, int depth)
        {
            if (depth > 64) throw new ArgumentException("msgpack: value nested deeper than 64");
            if (v == null) { w.Byte(0xc0); return; }
            if (v is bool) { w.Byte((bool)v ? (byte)0xc3 : (byte)0xc2); return; }
            if (v is string) { WriteStr(w, (string)v); return; }
            if (v is long) { WriteInt(w, (long)v); return; }
            if (v is int) { WriteInt(w, (int)v); return; }
            if (v is short) { WriteInt(w, (short)v); return; }
            if (v is sbyte) { WriteInt(w, (sbyte)v); return; }
            if (v is byte) { WriteInt(w, (byte)v); return; }
            if (v is ushort) { WriteInt(w, (ushort)v); return; }
            if (v is uint) { WriteInt(w, (uint)v); return; }
            if (v is ulong)
            {
                ulong u = (ulong)v;
                if (u <= long.MaxValue) WriteInt(w, (long)u);
                else { w.Byte(0xcf); w.BigEndian(u, 8); }
                return;
            }
            if (v is double) { w.Byte(0xcb); w.BigEndian((ulong)BitConverter.DoubleToInt64Bits((double)v), 8); return; }
            if (v is float)
            {
                w.Byte(0xca);
                w.BigEndian(BitConverter.ToUInt32(BitConverter.GetBytes((float)v), 0), 4);
                return;
            }
            var bin = v as byte[];
            if (bin != null)
            {
                WriteLength(w, bin.Length, 0xc4, 0xc5, 0xc6);
                w.Bytes(bin, 0, bin.Length);
                return;
            }
            var map = v as MsgMap;
            if (map != null)
            {
                WriteHeader(w, map.Count, 0x80, 0xde, 0xdf);
                foreach (var kv in map) { WriteStr(w, kv.Key); Write(w, kv.Value, depth + 1); }
                return;
            }
            var dict = v as IDictionary;
            if (dict != null)
            {
                WriteHeader(w, dict.Count, 0x80, 0xde, 0xdf);
                foreach (DictionaryEntry kv in dict)
                {
                    var key = kv.Key as string;
                    if (key == null) throw new ArgumentException("msgpack: map keys must be strings");
                    WriteStr(w, key);
                    Write(w, kv.Value, depth + 1);
                }
                return;
            }
            var list = v as IList;
            if (list != null)
            {
                WriteHeader(w, list.Count, 0x90, 0xdc, 0xdd);
                foreach (object item in list) Write(w, item, depth + 1);
                return;
            }
            throw new ArgumentException("msgpack: cannot encode a " + v.GetType().FullName);
        }

        static void WriteStr(Writer w, string s)
        {
            var bytes = Encoding.UTF8.GetBytes(s);
            int n = bytes.Length;
            if (n < 32) w.Byte((byte)(0xa0 | n));
            else WriteLength(w, n, 0xd9, 0xda, 0xdb);
            w.Bytes(bytes, 0, n);
        }

        // str8/bin8 (1-byte length), then 16- and 32-bit lengths
        static void WriteLength(Writer w, int n, byte b8, byte b16, byte b32)
        {
            if (n <= 0xff) { w.Byte(b8); w.BigEndian((ulong)n, 1); }
            else if (n <= 0xffff) { w.Byte(b16); w.BigEndian((ulong)n, 2); }
            else { w.Byte(b32); w.BigEndian((ulong)n, 4); }
        }

        static void WriteHeader(Writer w, int n, byte fix, byte b16, byte b32)
        {
            if (n < 16) w.Byte((byte)(fix | n));
            else if (n <= 0xffff) { w.Byte(b16); w.BigEndian((ulong)n, 2); }
            else { w.Byte(b32); w.BigEndian((ulong)n, 4); }
        }

        static void WriteInt(Writer w, long v)
        {
            if (v >= 0)
            {
                if (v <= 0x7f) w.Byte((byte)v);
                else if (v <= 0xff) { w.Byte(0xcc); w.BigEndian((ulong)v, 1); }
                else if (v <= 0xffff) { w.Byte(0xcd); w.BigEndian((ulong)v, 2); }
                else if (v <= 0xffffffffL) { w.Byte(0xce); w.BigEndian((ulong)v, 4); }
                else { w.Byte(0xcf); w.BigEndian((ulong)v, 8); }
            }
            else
            {
                if (v >= -32) w.Byte((byte)(sbyte)v);
                else if (v >= sbyte.MinValue) { w.Byte(0xd0); w.BigEndian((ulong)v, 1); }
                else if (v >= short.MinValue) { w.Byte(0xd1); w.BigEndian((ulong)v, 2); }
                else if (v >= int.MinValue) { w.Byte(0xd2); w.BigEndian((ulong)v, 4); }
                else { w.Byte(0xd3); w.BigEndian((ulong)v, 8); }
            }
        }

        /// <summary>msgpack-style name of a decoded value's type, for error messages.</summary>
        public static string TypeName(object v)
        {
            if (v == null) return "nil";
            if (v is bool) return "bool";
            if (v is long || v is ulong) return "int";
            if (v is double || v is float) return "float";
            if (v is string) return "str";
            if (v is byte[]) return "bin";
            if (v is MsgMap) return "map";
            if (v is IList) return "array";
            return v.GetType().Name;
        }
    }
}
