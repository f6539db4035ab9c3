// The transport under SidecarClient: one ZeroMQ DEALER connection, behind ITransport so a studio can plug in NetMQ.
//
// ZmtpTransport speaks ZMTP 3.1 (RFC 37, https://rfc.zeromq.org/spec/37/) with the NULL security mechanism
// (RFC 37 section "The NULL Security Mechanism") over one TCP connection, in plain managed code: no native
// library, so it runs under IL2CPP/AOT on every platform Unity builds for.

using System;
using System.Collections.Generic;
using System.Diagnostics;
using System.IO;
using System.Net;
using System.Net.Sockets;
using System.Text;

namespace Narrative.Sidecar
{
    /// <summary>The connection is gone (peer closed it, heartbeat timeout, a ZMTP protocol error, or Close was called).</summary>
    public class TransportClosedException : IOException
    {
        public TransportClosedException(string message, Exception inner = null) : base(message, inner) { }
    }

    /// <summary>One message-oriented connection to the sidecar's ROUTER socket, as a ZeroMQ DEALER sees it.
    ///
    /// Contract (what <see cref="SidecarClient"/> relies on):
    /// <list type="bullet">
    /// <item><see cref="Connect"/> is called once, before anything else; it returns when messages can be sent.</item>
    /// <item><see cref="Send"/> may be called from any thread; one call sends one single-frame message.</item>
    /// <item><see cref="Receive"/> is called from one thread only (the client's reader thread).</item>
    /// <item>A dropped connection must surface as <see cref="TransportClosedException"/> from Receive (and Send):
    /// the client then fails the requests in flight and reconnects with a new transport. A NetMQ adapter should
    /// therefore watch the socket's Disconnected monitor event, since a NetMQ DEALER reconnects silently and a
    /// request in flight would otherwise wait for its timeout.</item>
    /// </list></summary>
    public interface ITransport : IDisposable
    {
        /// <summary>Connects to <paramref name="endpoint"/> (<c>tcp://host:port</c>) and completes the handshake.</summary>
        /// <exception cref="TransportClosedException">refused, unreachable, not a ZeroMQ ROUTER, or no handshake within <paramref name="timeout"/>.</exception>
        void Connect(string endpoint, TimeSpan timeout);

        /// <summary>Sends one message of one frame. Thread-safe.</summary>
        /// <exception cref="TransportClosedException">the connection is gone.</exception>
        void Send(byte[] payload);

        /// <summary>The frames of the next message, or null when none arrived within <paramref name="timeout"/>.
        /// Also the place where heartbeats are answered and sent, so call it at least every few hundred ms.</summary>
        /// <exception cref="TransportClosedException">the connection is gone.</exception>
        byte[][] Receive(TimeSpan timeout);

        /// <summary>Closes the connection; a blocked Receive then throws TransportClosedException. Idempotent.</summary>
        void Close();

        /// <summary>A description of the connection for logs (e.g. the endpoint).</summary>
        string Description { get; }
    }

    /// <summary>Settings of <see cref="ZmtpTransport"/>.</summary>
    public sealed class ZmtpOptions
    {
        /// <summary>Send a ZMTP PING after this long without sending anything (RFC 37 "Connection Heartbeating";
        /// libzmq's ZMQ_HEARTBEAT_IVL). TimeSpan.Zero: never.</summary>
        public TimeSpan HeartbeatInterval = TimeSpan.FromSeconds(2);

        /// <summary>Declare the peer dead when nothing (message, PING or PONG) arrived for this long
        /// (libzmq's ZMQ_HEARTBEAT_TIMEOUT). The sidecar pings every 2 s, so 10 s is ample. TimeSpan.Zero: never.</summary>
        public TimeSpan HeartbeatTimeout = TimeSpan.FromSeconds(10);

        /// <summary>The TTL sent in our PINGs: the sidecar may drop us when it hears nothing for this long
        /// (libzmq's ZMQ_HEARTBEAT_TTL; RFC 37 sends it in tenths of a second, at most 6553.5 s).</summary>
        public TimeSpan HeartbeatTtl = TimeSpan.FromSeconds(30);

        /// <summary>Largest incoming message accepted (bytes, all frames); more closes the connection
        /// (protection against a hostile or broken peer, as libzmq's ZMQ_MAXMSGSIZE).</summary>
        public long MaxMessageBytes = 16L * 1024 * 1024;

        /// <summary>Optional ZMTP Identity property sent in READY (1..255 bytes, first byte not 0); null: none.</summary>
        public byte[] Identity;
    }

    /// <summary>A ZeroMQ DEALER over TCP: ZMTP 3.1 (RFC 37) with the NULL mechanism, heartbeats included.
    ///
    /// Wire format (RFC 37):
    /// <list type="bullet">
    /// <item>Greeting, 64 octets each way: signature <c>FF 00*8 7F</c>, version <c>03 01</c>, mechanism <c>"NULL"</c>
    /// padded with zeros to 20 octets, as-server <c>00</c>, 31 octets of filler.</item>
    /// <item>NULL handshake: each side sends a READY command whose metadata holds <c>Socket-Type</c> (<c>DEALER</c>
    /// here; the sidecar answers <c>ROUTER</c>) and optionally <c>Identity</c>; a property is name-size (1 octet),
    /// name, value-size (4 octets, network order), value. An ERROR command (reason-size, reason) refuses us.</item>
    /// <item>Frames: a flags octet (bit 0 MORE, bit 1 LONG, bit 2 COMMAND, others 0), a size (1 octet, or 8 octets
    /// in network order when LONG), the body. A command body is name-size (1 octet), name, data.</item>
    /// <item>Heartbeats (ZMTP 3.1): <c>PING</c> carries a 2-octet TTL (tenths of a second) and up to 16 octets of
    /// context; it is answered by <c>PONG</c> echoing the context.</item>
    /// </list>
    /// A DEALER sends each message as it is (no empty delimiter frame); the sidecar sends one frame per message.</summary>
    public sealed class ZmtpTransport : ITransport
    {
        const byte FlagMore = 0x01, FlagLong = 0x02, FlagCommand = 0x04;

        readonly ZmtpOptions _opt;
        readonly object _sendLock = new object();
        readonly Stopwatch _clock = Stopwatch.StartNew();
        Socket _sock;
        string _endpoint = "";
        volatile bool _closed;
        string _closeReason;
        bool _peerHeartbeats;   // the peer speaks ZMTP 3.1+ (PING/PONG)
        long _lastRecvMs, _lastSendMs;

        // receive buffer: unparsed bytes are _buf[_start.._end)
        byte[] _buf = new byte[64 * 1024];
        int _start, _end;
        readonly List<byte[]> _parts = new List<byte[]>();
        long _partsBytes;

        public ZmtpTransport(ZmtpOptions options = null) { _opt = options ?? new ZmtpOptions(); }

        public string Description { get { return "zmtp " + _endpoint; } }

        /// <summary>The Socket-Type the peer announced in its READY (the sidecar: ROUTER).</summary>
        public string PeerSocketType { get; private set; }

        /// <summary>The ZMTP version the peer announced, e.g. "3.1".</summary>
        public string PeerVersion { get; private set; }

        // ---- connect and handshake ----------------------------------------------------------------------------

        public void Connect(string endpoint, TimeSpan timeout)
        {
            if (_sock != null) throw new InvalidOperationException("ZmtpTransport.Connect: already connected; use a new transport");
            _endpoint = endpoint;
            string host; int port;
            ParseEndpoint(endpoint, out host, out port);
            var deadline = _clock.ElapsedMilliseconds + (long)timeout.TotalMilliseconds;
            try
            {
                IPAddress[] addresses;
                IPAddress ip;
                if (IPAddress.TryParse(host, out ip)) addresses = new[] { ip };
                else addresses = Dns.GetHostAddresses(host);
                if (addresses.Length == 0) throw new TransportClosedException("no address for " + host);
                var addr = addresses[0];
                foreach (var a in addresses) if (a.AddressFamily == AddressFamily.InterNetwork) { addr = a; break; }
                _sock = new Socket(addr.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
                _sock.NoDelay = true;
                var ar = _sock.BeginConnect(addr, port, null, null);
                if (!ar.AsyncWaitHandle.WaitOne(Remaining(deadline)))
                    throw new TransportClosedException(string.Format("connect to {0} timed out after {1:0.#} s", endpoint, timeout.TotalSeconds));
                _sock.EndConnect(ar);

                SendAll(Greeting());
                var peer = ReadExact(64, deadline);
                CheckGreeting(peer);
                SendAll(EncodeFrame(FlagCommand, ReadyCommand()));
                while (true)
                {
                    byte flags; byte[] body;
                    ReadFrameBlocking(deadline, out flags, out body);
                    if ((flags & FlagCommand) == 0) throw new TransportClosedException("ZMTP: expected the peer's READY command, got a message frame");
                    string name; int dataAt;
                    ParseCommand(body, out name, out dataAt);
                    if (name == "READY") { ParseReady(body, dataAt); break; }
                    if (name == "ERROR") throw new TransportClosedException("ZMTP: the peer refused the handshake: " + ErrorReason(body, dataAt));
                    throw new TransportClosedException("ZMTP: unexpected command '" + name + "' during the handshake");
                }
                _lastRecvMs = _lastSendMs = _clock.ElapsedMilliseconds;
            }
            catch (SocketException e)
            {
                Close();
                throw new TransportClosedException(string.Format("cannot connect to {0}: {1}", endpoint, e.Message), e);
            }
            catch (ObjectDisposedException e)
            {
                Close();
                throw new TransportClosedException(string.Format("connection to {0} closed during the handshake", endpoint), e);
            }
            catch (TransportClosedException)
            {
                Close();
                throw;
            }
        }

        int Remaining(long deadlineMs)
        {
            long left = deadlineMs - _clock.ElapsedMilliseconds;
            if (left <= 0) throw new TransportClosedException("ZMTP handshake with " + _endpoint + " timed out");
            return (int)Math.Min(left, int.MaxValue);
        }

        /// <summary>Parses <c>tcp://host:port</c> (host may be a name, an IPv4 address or [IPv6]).</summary>
        public static void ParseEndpoint(string endpoint, out string host, out int port)
        {
            const string scheme = "tcp://";
            if (endpoint == null || !endpoint.StartsWith(scheme, StringComparison.Ordinal))
                throw new ArgumentException("endpoint must look like tcp://host:port, got '" + endpoint + "'");
            string rest = endpoint.Substring(scheme.Length);
            int colon = rest.LastIndexOf(':');
            if (colon <= 0 || !int.TryParse(rest.Substring(colon + 1), out port) || port <= 0 || port > 65535)
                throw new ArgumentException("endpoint must look like tcp://host:port, got '" + endpoint + "'");
            host = rest.Substring(0, colon).Trim('[', ']');
            if (host == "*") host = "127.0.0.1";
        }

        static byte[] Greeting()
        {
            var g = new byte[64];
            g[0] = 0xff;            // signature: %xFF padding(8) %x7F
            g[9] = 0x7f;
            g[10] = 3;              // version major
            g[11] = 1;              // version minor
            var mech = Encoding.ASCII.GetBytes("NULL");
            Buffer.BlockCopy(mech, 0, g, 12, mech.Length);   // mechanism: 20 octets, zero padded
            g[32] = 0;              // as-server: we are the client
            return g;               // filler: 31 zero octets
        }

        void CheckGreeting(byte[] g)
        {
            if (g[0] != 0xff || g[9] != 0x7f)
                throw new TransportClosedException("ZMTP: the peer at " + _endpoint + " is not a ZeroMQ socket (bad greeting signature)");
            PeerVersion = g[10] + "." + g[11];
            if (g[10] < 3) throw new TransportClosedException("ZMTP: the peer speaks ZMTP " + PeerVersion + "; 3.0 or later is required");
            _peerHeartbeats = g[10] > 3 || g[11] >= 1;
            string mech = Encoding.ASCII.GetString(g, 12, 20).TrimEnd('\0');
            if (mech != "NULL") throw new TransportClosedException("ZMTP: the peer wants security mechanism '" + mech + "'; only NULL is supported");
        }

        byte[] ReadyCommand()
        {
            var ms = new MemoryStream();
            WriteShortString(ms, "READY");
            WriteProperty(ms, "Socket-Type", Encoding.ASCII.GetBytes("DEALER"));
            if (_opt.Identity != null)
            {
                if (_opt.Identity.Length == 0 || _opt.Identity.Length > 255 || _opt.Identity[0] == 0)
                    throw new ArgumentException("ZMTP Identity must be 1..255 bytes and not start with a zero byte");
                WriteProperty(ms, "Identity", _opt.Identity);
            }
            return ms.ToArray();
        }

        static void WriteShortString(MemoryStream ms, string s)
        {
            var b = Encoding.ASCII.GetBytes(s);
            ms.WriteByte((byte)b.Length);
            ms.Write(b, 0, b.Length);
        }

        static void WriteProperty(MemoryStream ms, string name, byte[] value)
        {
            WriteShortString(ms, name);
            uint n = (uint)value.Length;
            ms.WriteByte((byte)(n >> 24)); ms.WriteByte((byte)(n >> 16)); ms.WriteByte((byte)(n >> 8)); ms.WriteByte((byte)n);
            ms.Write(value, 0, value.Length);
        }

        static void ParseCommand(byte[] body, out string name, out int dataAt)
        {
            if (body.Length < 1 || body.Length < 1 + body[0]) throw new TransportClosedException("ZMTP: malformed command frame");
            name = Encoding.ASCII.GetString(body, 1, body[0]);
            dataAt = 1 + body[0];
        }

        void ParseReady(byte[] body, int at)
        {
            while (at < body.Length)
            {
                int nameLen = body[at];
                if (at + 1 + nameLen + 4 > body.Length) throw new TransportClosedException("ZMTP: malformed READY metadata");
                string name = Encoding.ASCII.GetString(body, at + 1, nameLen);
                at += 1 + nameLen;
                long valueLen = ((long)body[at] << 24) | ((long)body[at + 1] << 16) | ((long)body[at + 2] << 8) | body[at + 3];
                at += 4;
                if (at + valueLen > body.Length) throw new TransportClosedException("ZMTP: malformed READY metadata");
                if (string.Equals(name, "Socket-Type", StringComparison.OrdinalIgnoreCase))
                    PeerSocketType = Encoding.ASCII.GetString(body, at, (int)valueLen);
                at += (int)valueLen;
            }
            // RFC 28 (REQ-REP) / RFC 37: a DEALER talks to a ROUTER, a REP or another DEALER.
            if (PeerSocketType != "ROUTER" && PeerSocketType != "DEALER" && PeerSocketType != "REP")
                throw new TransportClosedException("ZMTP: the peer is a " + (PeerSocketType ?? "(no Socket-Type)") + " socket; a DEALER needs a ROUTER (is this the sidecar?)");
        }

        static string ErrorReason(byte[] body, int at)
        {
            if (at >= body.Length) return "(no reason)";
            int n = Math.Min(body[at], body.Length - at - 1);
            return Encoding.ASCII.GetString(body, at + 1, n);
        }

        // ---- frames -------------------------------------------------------------------------------------------

        static byte[] EncodeFrame(byte flags, byte[] body)
        {
            bool isLong = body.Length > 255;
            int header = isLong ? 9 : 2;
            var f = new byte[header + body.Length];
            f[0] = (byte)(flags | (isLong ? FlagLong : 0));
            if (isLong) { ulong n = (ulong)body.Length; for (int i = 8; i >= 1; i--) { f[i] = (byte)n; n >>= 8; } }
            else f[1] = (byte)body.Length;
            Buffer.BlockCopy(body, 0, f, header, body.Length);
            return f;
        }

        void SendAll(byte[] data)
        {
            lock (_sendLock)
            {
                int off = 0;
                while (off < data.Length) off += _sock.Send(data, off, data.Length - off, SocketFlags.None);
                _lastSendMs = _clock.ElapsedMilliseconds;
            }
        }

        public void Send(byte[] payload)
        {
            if (payload == null) throw new ArgumentNullException("payload");
            if (_closed || _sock == null) throw new TransportClosedException(_closeReason ?? "not connected");
            try { SendAll(EncodeFrame(0, payload)); }
            catch (SocketException e) { Close("send failed: " + e.Message); throw new TransportClosedException("send failed: " + e.Message, e); }
            catch (ObjectDisposedException e) { throw new TransportClosedException(_closeReason ?? "closed", e); }
        }

        /// <summary>Fills the buffer with at least <paramref name="n"/> unparsed bytes (blocking, for the handshake).</summary>
        byte[] ReadExact(int n, long deadline)
        {
            while (_end - _start < n)
            {
                if (!_sock.Poll(Math.Min(Remaining(deadline), 1000) * 1000, SelectMode.SelectRead)) continue;
                if (Fill() == 0) throw new TransportClosedException("ZMTP: the peer closed the connection during the handshake");
            }
            var r = new byte[n];
            Buffer.BlockCopy(_buf, _start, r, 0, n);
            _start += n;
            return r;
        }

        void ReadFrameBlocking(long deadline, out byte flags, out byte[] body)
        {
            while (!TryParseFrame(out flags, out body))
            {
                if (!_sock.Poll(Math.Min(Remaining(deadline), 1000) * 1000, SelectMode.SelectRead)) continue;
                if (Fill() == 0) throw new TransportClosedException("ZMTP: the peer closed the connection during the handshake");
            }
        }

        /// <summary>Reads what the socket has into the buffer; returns the count (0: the peer closed).</summary>
        int Fill()
        {
            if (_start == _end) { _start = _end = 0; }
            if (_buf.Length - _end < 4096)
            {
                int live = _end - _start;
                if (_start > 0 && live + 4096 <= _buf.Length)
                {
                    Buffer.BlockCopy(_buf, _start, _buf, 0, live);
                }
                else
                {
                    var nb = new byte[Math.Max(_buf.Length * 2, live + 4096)];
                    Buffer.BlockCopy(_buf, _start, nb, 0, live);
                    _buf = nb;
                }
                _start = 0; _end = live;
            }
            int got = _sock.Receive(_buf, _end, _buf.Length - _end, SocketFlags.None);
            _end += got;
            if (got > 0) _lastRecvMs = _clock.ElapsedMilliseconds;
            return got;
        }

        /// <summary>One whole frame from the buffer, or false when more bytes are needed.</summary>
        bool TryParseFrame(out byte flags, out byte[] body)
        {
            flags = 0; body = null;
            int avail = _end - _start;
            if (avail < 2) return false;
            flags = _buf[_start];
            if ((flags & 0xf8) != 0) throw new TransportClosedException(string.Format("ZMTP: reserved flag bits set (0x{0:x2}): not a ZMTP 3 stream", flags));
            long size;
            int header;
            if ((flags & FlagLong) != 0)
            {
                if (avail < 9) return false;
                ulong n = 0;
                for (int i = 1; i <= 8; i++) n = (n << 8) | _buf[_start + i];
                if (n > (ulong)_opt.MaxMessageBytes) throw new TransportClosedException(string.Format("ZMTP: incoming frame of {0} bytes is over the {1}-byte limit", n, _opt.MaxMessageBytes));
                size = (long)n; header = 9;
            }
            else { size = _buf[_start + 1]; header = 2; }
            if (avail < header + size)
            {
                if (_buf.Length < header + size) // grow now so Fill can take the whole frame
                {
                    var nb = new byte[header + size + 4096];
                    Buffer.BlockCopy(_buf, _start, nb, 0, avail);
                    _buf = nb; _start = 0; _end = avail;
                }
                return false;
            }
            body = new byte[size];
            Buffer.BlockCopy(_buf, _start + header, body, 0, (int)size);
            _start += header + (int)size;
            return true;
        }

        // ---- receive loop step --------------------------------------------------------------------------------

        public byte[][] Receive(TimeSpan timeout)
        {
            long deadline = _clock.ElapsedMilliseconds + (long)Math.Max(0, timeout.TotalMilliseconds);
            try
            {
                while (true)
                {
                    if (_closed) throw new TransportClosedException(_closeReason ?? "closed");
                    byte flags; byte[] body;
                    while (TryParseFrame(out flags, out body))
                    {
                        if ((flags & FlagCommand) != 0) { OnCommand(body); continue; }
                        _partsBytes += body.Length;
                        if (_partsBytes > _opt.MaxMessageBytes) throw new TransportClosedException(string.Format("ZMTP: incoming message over the {0}-byte limit", _opt.MaxMessageBytes));
                        _parts.Add(body);
                        if ((flags & FlagMore) == 0)
                        {
                            var msg = _parts.ToArray();
                            _parts.Clear(); _partsBytes = 0;
                            return msg;
                        }
                    }
                    long now = _clock.ElapsedMilliseconds;
                    Heartbeat(now);
                    long left = deadline - now;
                    if (left <= 0) return null;
                    // wake up in time for the next heartbeat duty
                    long wait = Math.Min(left, 250);
                    if (_sock.Poll((int)(wait * 1000), SelectMode.SelectRead))
                    {
                        if (Fill() == 0) { Close("the sidecar closed the connection"); throw new TransportClosedException(_closeReason); }
                    }
                }
            }
            catch (SocketException e)
            {
                Close("receive failed: " + e.Message);
                throw new TransportClosedException(_closeReason, e);
            }
            catch (ObjectDisposedException e)
            {
                throw new TransportClosedException(_closeReason ?? "closed", e);
            }
            catch (TransportClosedException e)
            {
                Close(e.Message);
                throw;
            }
        }

        void Heartbeat(long now)
        {
            if (!_peerHeartbeats) return;
            long timeout = (long)_opt.HeartbeatTimeout.TotalMilliseconds;
            if (timeout > 0 && now - _lastRecvMs > timeout)
                throw new TransportClosedException(string.Format("the sidecar sent nothing for {0:0.#} s (heartbeat timeout)", (now - _lastRecvMs) / 1000.0));
            long ivl = (long)_opt.HeartbeatInterval.TotalMilliseconds;
            if (ivl > 0 && now - _lastSendMs >= ivl)
            {
                // PING: ttl in tenths of a second (2 octets), empty context
                var ms = new MemoryStream();
                WriteShortString(ms, "PING");
                long ttl = Math.Min(0xffff, Math.Max(0, (long)(_opt.HeartbeatTtl.TotalMilliseconds / 100)));
                ms.WriteByte((byte)(ttl >> 8)); ms.WriteByte((byte)ttl);
                SendAll(EncodeFrame(FlagCommand, ms.ToArray()));
            }
        }

        void OnCommand(byte[] body)
        {
            string name; int at;
            ParseCommand(body, out name, out at);
            switch (name)
            {
                case "PING":
                {
                    // PONG echoes the ping-context (what follows the 2-octet TTL), at most 16 octets.
                    int ctxAt = Math.Min(body.Length, at + 2);
                    int ctxLen = Math.Min(16, body.Length - ctxAt);
                    var ms = new MemoryStream();
                    WriteShortString(ms, "PONG");
                    ms.Write(body, ctxAt, ctxLen);
                    SendAll(EncodeFrame(FlagCommand, ms.ToArray()));
                    break;
                }
                case "PONG":
                    break;  // any traffic counts as liveness (_lastRecvMs moved in Fill)
                case "ERROR":
                    throw new TransportClosedException("ZMTP ERROR from the sidecar: " + ErrorReason(body, at));
                default:
                    break;  // RFC 37: unknown commands are ignored
            }
        }

        public void Close() { Close("closed by the client"); }

        void Close(string reason)
        {
            if (_closed) return;
            _closeReason = reason;
            _closed = true;
            var s = _sock;
            if (s == null) return;
            try { s.Shutdown(SocketShutdown.Both); } catch (SocketException) { } catch (ObjectDisposedException) { }
            s.Close();
        }

        public void Dispose() { Close(); }
    }
}
