// The sidecar client: one connection, one background reader thread, requests matched to replies by id.
// Engine-agnostic (no UnityEngine): the Unity layer (Runtime/Unity) wraps it and moves callbacks to the main thread.

using System;
using System.Collections.Generic;
using System.Diagnostics;
using System.Text;
using System.Threading;
using System.Threading.Tasks;

namespace Narrative.Sidecar
{
    /// <summary>Settings of a <see cref="SidecarClient"/>. Defaults suit a game on the same machine as the sidecar.</summary>
    public sealed class SidecarClientOptions
    {
        /// <summary>The sidecar's ROUTER endpoint (what <c>narrative serve</c> prints).</summary>
        public string Endpoint = "tcp://127.0.0.1:5555";
        /// <summary>Sent in <c>hello.client</c> (for the sidecar's logs).</summary>
        public string ClientName = "unity";
        /// <summary>Longest wait for the reply to hello, ping, reset, lore queries.</summary>
        public TimeSpan RequestTimeout = TimeSpan.FromSeconds(30);
        /// <summary>Say: longest wait for the first chunk, and then for each next chunk or done (the first waits behind
        /// other clients' turns: one model decodes one turn at a time).</summary>
        public TimeSpan StreamTimeout = TimeSpan.FromSeconds(120);
        /// <summary>Generate: longest wait for the result (the batch model loads on the first request).</summary>
        public TimeSpan GenerateTimeout = TimeSpan.FromMinutes(10);
        /// <summary>One connection attempt: TCP connect, ZMTP handshake, hello -> ready.</summary>
        public TimeSpan ConnectTimeout = TimeSpan.FromSeconds(10);
        /// <summary>Reconnect when the connection drops (the sidecar restarted). Requests in flight then fail with
        /// <see cref="SidecarDisconnectedException"/>; none is ever resent. Requests made while disconnected wait
        /// (within their timeout) and are sent once the connection is back.</summary>
        public bool AutoReconnect = true;
        /// <summary>Backoff between connection attempts: doubles from the min to the max (with jitter).</summary>
        public TimeSpan ReconnectMinDelay = TimeSpan.FromMilliseconds(100);
        public TimeSpan ReconnectMaxDelay = TimeSpan.FromSeconds(2);
        /// <summary>Makes the transport of each connection attempt. Default: <see cref="ZmtpTransport"/> (pure C# ZMTP 3.1).</summary>
        public Func<ITransport> TransportFactory = () => new ZmtpTransport();
        /// <summary>Diagnostics (connects, drops, stray messages); called on the reader thread. Null: silent.</summary>
        public Action<string> Log;
    }

    /// <summary>Options of one say. Null fields are left out of the message (the sidecar's defaults apply).</summary>
    public sealed class SayOptions
    {
        /// <summary>Conversation key (e.g. a save-game id) kept across connections; null: this connection.</summary>
        public string Session;
        /// <summary>1..4096.</summary>
        public int? MaxTokens;
        /// <summary>0..2.</summary>
        public double? Temperature;
        public long? Seed;
        /// <summary>Game state merged into the session's before this turn (as <see cref="SidecarClient.SetStateAsync"/>): key ->
        /// bool, int, float or string. Sending it with every say keeps the sidecar right after a restart (state lives in its memory).</summary>
        public IDictionary<string, object> State;
        /// <summary>Overrides <see cref="SidecarClientOptions.StreamTimeout"/> for this say.</summary>
        public TimeSpan? Timeout;
    }

    /// <summary>A request on its way: sent (or waiting for a connection), not yet answered.</summary>
    public abstract class PendingRequest
    {
        internal byte[] Payload;
        internal long DeadlineMs;
        internal long TimeoutMs;
        internal bool Sent;
        internal string What;
        internal long Order;   // submission order, to match an id-less frame_too_large to its request
        int _finished;

        /// <summary>The request's id (replies carry it).</summary>
        public string RequestId { get; internal set; }

        /// <summary>True once answered, failed or timed out.</summary>
        public bool IsFinished { get { return Volatile.Read(ref _finished) != 0; } }

        internal bool TryFinish() { return Interlocked.Exchange(ref _finished, 1) == 0; }
        internal abstract void Deliver(Message m, SidecarClient client);
        internal abstract void Fail(SidecarException e, SidecarClient client);
    }

    sealed class ReplyRequest : PendingRequest
    {
        internal readonly TaskCompletionSource<Message> Tcs = new TaskCompletionSource<Message>(TaskCreationOptions.RunContinuationsAsynchronously);

        internal override void Deliver(Message m, SidecarClient client)
        {
            if (!TryFinish()) return;
            var err = m as ErrorMessage;
            if (err != null) Tcs.TrySetException(SidecarException.FromError(err));
            else Tcs.TrySetResult(m);
        }

        internal override void Fail(SidecarException e, SidecarClient client)
        {
            if (TryFinish()) Tcs.TrySetException(e);
        }
    }

    sealed class CancelRequest : PendingRequest
    {
        internal Action<SidecarException> OnError;

        internal override void Deliver(Message m, SidecarClient client)
        {
            var err = m as ErrorMessage;
            if (err == null || !TryFinish()) return;
            var e = SidecarException.FromError(err);
            if (OnError != null) client.Invoke(OnError, e, "cancel onError");
            else client.RaiseUnroutedError(e);
        }

        // no reply is the success case: a cancel that times out simply finished
        internal override void Fail(SidecarException e, SidecarClient client) { TryFinish(); }
    }

    /// <summary>One say in progress: chunks arrive through the callback, then the NPC's actions (when it has a declaration),
    /// then <see cref="Completion"/> completes with the <see cref="Done"/> message (its <see cref="Done.Actions"/> holds the
    /// actions), or faults with a <see cref="SidecarException"/> (refused, timed out, disconnected).
    /// Callbacks run on the client's reader thread (the Unity layer moves them to the main thread).</summary>
    public sealed class SayStream : PendingRequest
    {
        readonly TaskCompletionSource<Done> _tcs = new TaskCompletionSource<Done>(TaskCreationOptions.RunContinuationsAsynchronously);
        readonly StringBuilder _text = new StringBuilder();
        readonly SidecarClient _client;
        readonly List<NpcAction> _actions = new List<NpcAction>();
        internal Action<Chunk> OnChunk;
        internal Action<NpcAction> OnAction;
        internal Action<Done> OnDone;
        internal Action<SidecarException> OnError;
        int _chunks;

        internal SayStream(SidecarClient client) { _client = client; }

        /// <summary>The NPC's line: the done message, or an exception.</summary>
        public Task<Done> Completion { get { return _tcs.Task; } }

        /// <summary>The chunks' text so far, concatenated in seq order.</summary>
        public string Text { get { lock (_text) return _text.ToString(); } }

        /// <summary>Chunks received so far.</summary>
        public int ChunkCount { get { return Volatile.Read(ref _chunks); } }

        /// <summary>The NPC's actions received so far, in seq order (a copy).</summary>
        public List<NpcAction> Actions { get { lock (_actions) return new List<NpcAction>(_actions); } }

        /// <summary>Asks the sidecar to stop this stream; it then ends with a done whose FinishReason is <c>cancelled</c>.</summary>
        public void Cancel() { if (!IsFinished) _client.Cancel(RequestId); }

        internal override void Deliver(Message m, SidecarClient client)
        {
            if (IsFinished) return;
            var chunk = m as Chunk;
            if (chunk != null)
            {
                DeadlineMs = client.NowMs + TimeoutMs;  // the stream timeout is per message
                lock (_text) _text.Append(chunk.Text);
                Interlocked.Increment(ref _chunks);
                if (OnChunk != null) client.Invoke(OnChunk, chunk, "onChunk");
                return;
            }
            var action = m as NpcAction;
            if (action != null)
            {
                DeadlineMs = client.NowMs + TimeoutMs;
                lock (_actions) _actions.Add(action);
                if (OnAction != null) client.Invoke(OnAction, action, "onAction");
                return;
            }
            var done = m as Done;
            if (done != null)
            {
                if (!TryFinish()) return;
                done.Actions = Actions;
                if (OnDone != null) client.Invoke(OnDone, done, "onDone");
                _tcs.TrySetResult(done);
                return;
            }
            var err = m as ErrorMessage;
            if (err != null) { Fail(SidecarException.FromError(err), client); return; }
            client.RaiseEvent(m);  // a type this client does not know, in this stream: surfaced, not fatal
        }

        internal override void Fail(SidecarException e, SidecarClient client)
        {
            if (!TryFinish()) return;
            if (OnError != null) client.Invoke(OnError, e, "onError");
            _tcs.TrySetException(e);
        }
    }

    /// <summary>A client of the narrative sidecar over ZeroMQ (bridge/PROTOCOL.md).
    ///
    /// One connection and one background reader thread per client; every method is thread-safe. Requests are
    /// matched to replies by id, so any number may be in flight (say streams, pings, lore queries) on one connection.
    /// Every request has a timeout. When the connection drops (the sidecar restarted), requests in flight fail with
    /// <see cref="SidecarDisconnectedException"/> (never resent), the client reconnects with backoff and sends
    /// <c>hello</c> again; the next request works.
    ///
    /// Callbacks, events and task continuations: callbacks and events run on the reader thread (keep them short);
    /// task continuations run on the thread pool. Unity: use the NarrativeSidecar component, which moves them to the main thread.</summary>
    /// <example><code>
    /// using (var c = new SidecarClient(new SidecarClientOptions { Endpoint = "tcp://127.0.0.1:5555" }))
    /// {
    ///     Ready ready = c.ConnectAsync().Result;
    ///     Done done = c.SayAsync("odile-brask", "Any news from the docks?", null, ch => Console.Write(ch.Text)).Result;
    /// }
    /// </code></example>
    public sealed class SidecarClient : IDisposable
    {
        readonly SidecarClientOptions _opt;
        readonly object _lock = new object();
        readonly Dictionary<string, PendingRequest> _pending = new Dictionary<string, PendingRequest>(StringComparer.Ordinal);
        readonly Queue<PendingRequest> _outbox = new Queue<PendingRequest>();
        readonly List<KeyValuePair<long, TaskCompletionSource<Ready>>> _connectWaiters = new List<KeyValuePair<long, TaskCompletionSource<Ready>>>();
        readonly Stopwatch _clock = Stopwatch.StartNew();
        readonly ManualResetEvent _wake = new ManualResetEvent(false);
        readonly string _idPrefix;
        readonly Random _jitter = new Random();
        ITransport _transport;   // set while connected (after ready)
        ITransport _attempt;     // the transport being connected
        Thread _reader;
        volatile bool _closed;
        long _nextId;
        long _nextOrder;
        long _lastSweepMs;
        string _lastConnectError = "not connected yet";
        int _connections;

        public SidecarClient(SidecarClientOptions options = null)
        {
            _opt = options ?? new SidecarClientOptions();
            _idPrefix = "u" + ((uint)Guid.NewGuid().GetHashCode()).ToString("x8").Substring(0, 5) + "-";
        }

        public SidecarClient(string endpoint) : this(new SidecarClientOptions { Endpoint = endpoint }) { }

        public SidecarClientOptions Options { get { return _opt; } }

        /// <summary>The ready message of the current (or last) connection: NPC ids, models, limits.</summary>
        public Ready Ready { get; private set; }

        /// <summary>True while connected and greeted (hello answered).</summary>
        public bool IsConnected { get { return Volatile.Read(ref _transport) != null; } }

        /// <summary>Successful connections so far (1 after the first connect; +1 per reconnect).</summary>
        public int ConnectionCount { get { return Volatile.Read(ref _connections); } }

        /// <summary>Connected and greeted (first connect and every reconnect); reader thread.</summary>
        public event Action<Ready> Connected;
        /// <summary>The connection dropped; the argument says why. Requests in flight have been failed. Reader thread.</summary>
        public event Action<string> Disconnected;
        /// <summary>A message the sidecar pushed unasked (<c>lore.changed</c>, <c>lore.error</c>) or of a type this client does not know. Reader thread.</summary>
        public event Action<Message> EventReceived;
        /// <summary>An error no pending request owns (id <c>"?"</c>: the sidecar could not read a frame), or an unreadable message. Reader thread.</summary>
        public event Action<SidecarException> UnroutedError;

        internal long NowMs { get { return _clock.ElapsedMilliseconds; } }

        // ---- connection ------------------------------------------------------------------------------------------

        /// <summary>Starts the reader thread (once) and waits for the connection: completes with the ready message, or
        /// faults with <see cref="SidecarDisconnectedException"/> when no connection is made within ConnectTimeout
        /// (with AutoReconnect the client keeps trying in the background and raises Connected when it succeeds).</summary>
        public Task<Ready> ConnectAsync()
        {
            var tcs = new TaskCompletionSource<Ready>(TaskCreationOptions.RunContinuationsAsynchronously);
            lock (_lock)
            {
                if (_closed) { tcs.SetException(new SidecarDisconnectedException("the client is closed", "")); return tcs.Task; }
                if (_transport != null && Ready != null) { tcs.SetResult(Ready); return tcs.Task; }
                _connectWaiters.Add(new KeyValuePair<long, TaskCompletionSource<Ready>>(NowMs + (long)_opt.ConnectTimeout.TotalMilliseconds, tcs));
                StartReader();
            }
            return tcs.Task;
        }

        /// <summary>Blocking <see cref="ConnectAsync"/>.</summary>
        public Ready Connect()
        {
            try { return ConnectAsync().GetAwaiter().GetResult(); }
            catch (AggregateException e) { throw e.InnerException; }
        }

        void StartReader()
        {
            if (_reader != null) return;
            _reader = new Thread(ReaderLoop) { IsBackground = true, Name = "narrative-sidecar-reader" };
            _reader.Start();
        }

        void ReaderLoop()
        {
            int attempt = 0;
            while (!_closed)
            {
                ITransport t = null;
                Ready ready;
                try
                {
                    t = _opt.TransportFactory();
                    lock (_lock) { if (_closed) break; _attempt = t; }
                    t.Connect(_opt.Endpoint, _opt.ConnectTimeout);
                    ready = Greet(t);
                }
                catch (Exception e)
                {
                    if (t != null) t.Close();
                    string why = e is SidecarException || e is TransportClosedException ? e.Message : e.GetType().Name + ": " + e.Message;
                    _lastConnectError = why;
                    if (attempt == 0) LogLine("connect to " + _opt.Endpoint + " failed: " + why);
                    if (!_opt.AutoReconnect) { Shutdown("cannot connect (AutoReconnect is off): " + why); break; }
                    Backoff(attempt++);
                    continue;
                }
                finally { lock (_lock) _attempt = null; }

                attempt = 0;
                List<PendingRequest> flush;
                List<TaskCompletionSource<Ready>> waiters;
                lock (_lock)
                {
                    if (_closed) { t.Close(); break; }
                    Ready = ready;
                    _transport = t;
                    _connections++;
                    flush = new List<PendingRequest>();
                    while (_outbox.Count > 0)
                    {
                        var p = _outbox.Dequeue();
                        if (p.IsFinished) continue;
                        p.Sent = true;
                        flush.Add(p);
                    }
                    waiters = new List<TaskCompletionSource<Ready>>();
                    foreach (var w in _connectWaiters) waiters.Add(w.Value);
                    _connectWaiters.Clear();
                }
                LogLine(string.Format("connected to {0} ({1}, {2} NPCs){3}", _opt.Endpoint, ready.Server, ready.Npcs.Count, _connections > 1 ? " again" : ""));
                try { foreach (var p in flush) t.Send(p.Payload); }
                catch (TransportClosedException) { /* noticed by Receive below */ }
                foreach (var w in waiters) w.TrySetResult(ready);
                Raise(Connected, ready, "Connected");

                string reason;
                try
                {
                    while (!_closed)
                    {
                        var frames = t.Receive(TimeSpan.FromMilliseconds(100));
                        if (frames != null) Dispatch(frames);
                        Sweep();
                    }
                    reason = "the client was closed";
                }
                catch (TransportClosedException e) { reason = e.Message; }
                catch (Exception e) { reason = "reader failed: " + e; }
                t.Close();
                if (_closed) break;
                OnDrop(reason);
                if (!_opt.AutoReconnect) { Shutdown("disconnected (AutoReconnect is off): " + reason); break; }
            }
        }

        /// <summary>Sends hello on a fresh connection and waits for its ready (other messages are dispatched as usual).</summary>
        Ready Greet(ITransport t)
        {
            var hello = new Hello { Id = NewId(), Client = _opt.ClientName ?? "" };
            t.Send(hello.Encode());
            long deadline = NowMs + (long)_opt.ConnectTimeout.TotalMilliseconds;
            while (true)
            {
                long left = deadline - NowMs;
                if (left <= 0) throw new SidecarTimeoutException("no ready from " + _opt.Endpoint + " after hello", hello.Id);
                var frames = t.Receive(TimeSpan.FromMilliseconds(Math.Min(left, 100)));
                Sweep();
                if (frames == null) continue;
                if (frames.Length == 1)
                {
                    Message m;
                    try { m = Message.Decode(frames[0]); }
                    catch (MsgPackException e) { throw new SidecarProtocolException("unreadable answer to hello: " + e.Message, hello.Id, e); }
                    if (m.Id == hello.Id)
                    {
                        var r = m as Ready;
                        if (r != null) return r;
                        var err = m as ErrorMessage;
                        if (err != null) throw SidecarException.FromError(err);
                        throw new SidecarProtocolException("expected ready, got " + m.Type, hello.Id);
                    }
                }
                Dispatch(frames);
            }
        }

        /// <summary>Fail every request in flight as disconnected (never resent): the sidecar said it is going down.</summary>
        void FailInFlight(string reason)
        {
            var failed = new List<PendingRequest>();
            lock (_lock)
            {
                foreach (var p in _pending.Values) if (p.Sent) failed.Add(p);
                foreach (var p in failed) _pending.Remove(p.RequestId);
            }
            foreach (var p in failed)
                p.Fail(new SidecarDisconnectedException(string.Format("{0} while {1} was in flight; not resent", reason, p.What), p.RequestId), this);
        }

        void OnDrop(string reason)
        {
            var failed = new List<PendingRequest>();
            lock (_lock)
            {
                _transport = null;
                foreach (var p in _pending.Values) if (p.Sent) failed.Add(p);
                foreach (var p in failed) _pending.Remove(p.RequestId);
            }
            LogLine("disconnected from " + _opt.Endpoint + ": " + reason + (failed.Count > 0 ? string.Format(" ({0} requests in flight failed)", failed.Count) : ""));
            foreach (var p in failed)
                p.Fail(new SidecarDisconnectedException(string.Format("connection to the sidecar lost while {0} was in flight ({1}); not resent", p.What, reason), p.RequestId), this);
            Raise(Disconnected, reason, "Disconnected");
        }

        void Backoff(int attempt)
        {
            double min = _opt.ReconnectMinDelay.TotalMilliseconds, max = _opt.ReconnectMaxDelay.TotalMilliseconds;
            double delay = Math.Min(max, min * Math.Pow(2, Math.Min(attempt, 20)));
            double jitter;
            lock (_jitter) jitter = 0.75 + 0.25 * _jitter.NextDouble();
            long until = NowMs + (long)(delay * jitter);
            while (!_closed)
            {
                Sweep();
                long left = until - NowMs;
                if (left <= 0) break;
                _wake.WaitOne((int)Math.Min(left, 100));
            }
        }

        /// <summary>Fails requests (and connect waits) past their deadline.</summary>
        void Sweep()
        {
            long now = NowMs;
            if (now - _lastSweepMs < 50) return;
            _lastSweepMs = now;
            List<PendingRequest> expired = null;
            List<TaskCompletionSource<Ready>> lateWaiters = null;
            lock (_lock)
            {
                foreach (var p in _pending.Values)
                    if (p.DeadlineMs <= now) (expired ?? (expired = new List<PendingRequest>())).Add(p);
                if (expired != null) foreach (var p in expired) _pending.Remove(p.RequestId);
                for (int i = _connectWaiters.Count - 1; i >= 0; i--)
                    if (_connectWaiters[i].Key <= now)
                    {
                        (lateWaiters ?? (lateWaiters = new List<TaskCompletionSource<Ready>>())).Add(_connectWaiters[i].Value);
                        _connectWaiters.RemoveAt(i);
                    }
            }
            if (lateWaiters != null)
                foreach (var w in lateWaiters)
                    w.TrySetException(new SidecarDisconnectedException(string.Format("could not connect to the sidecar at {0} in {1:0.#} s ({2}); is `narrative serve` running? Still retrying in the background.",
                        _opt.Endpoint, _opt.ConnectTimeout.TotalSeconds, _lastConnectError), ""));
            if (expired == null) return;
            foreach (var p in expired)
            {
                string detail = p.Sent
                    ? string.Format("no answer to {0} from {1} within {2:0.#} s", p.What, _opt.Endpoint, p.TimeoutMs / 1000.0)
                    : string.Format("{0} not sent: no connection to {1} within {2:0.#} s ({3})", p.What, _opt.Endpoint, p.TimeoutMs / 1000.0, _lastConnectError);
                p.Fail(new SidecarTimeoutException(detail, p.RequestId), this);
                if (p.Sent && p is SayStream) Cancel(p.RequestId);  // free the model: the stream is abandoned
            }
        }

        void Dispatch(byte[][] frames)
        {
            if (frames.Length != 1)
            {
                RaiseUnroutedError(new SidecarProtocolException(string.Format("expected one frame per message, got {0}", frames.Length), "?"));
                return;
            }
            Message m;
            try { m = Message.Decode(frames[0]); }
            catch (MsgPackException e)
            {
                RaiseUnroutedError(new SidecarProtocolException("unreadable message from the sidecar: " + e.Message, "?", e));
                return;
            }
            PendingRequest p;
            lock (_lock) _pending.TryGetValue(m.Id, out p);
            if (p != null)
            {
                p.Deliver(m, this);
                if (p.IsFinished) lock (_lock) { PendingRequest cur; if (_pending.TryGetValue(m.Id, out cur) && cur == p) _pending.Remove(m.Id); }
                return;
            }
            var err = m as ErrorMessage;
            if (err != null && err.Id == "?" && err.Code == "frame_too_large")
            {
                // The sidecar refuses an oversized frame before reading it, so its error carries id "?". Only a request
                // over ready.limits.max_frame_bytes can cause it, and one connection's frames are read in order: the
                // oldest such request in flight is the one refused.
                var owner = OversizedInFlight();
                if (owner != null)
                {
                    owner.Deliver(err, this);
                    lock (_lock) { PendingRequest cur; if (_pending.TryGetValue(owner.RequestId, out cur) && cur == owner) _pending.Remove(owner.RequestId); }
                    return;
                }
            }
            if (err != null) { RaiseUnroutedError(SidecarException.FromError(err)); return; }
            var down = m as Shutdown;
            if (down != null) FailInFlight("the sidecar is shutting down (" + down.Reason + (down.Text.Length > 0 ? ": " + down.Text : "") + ")");
            if (m.IsEvent || m is UnknownMessage) { RaiseEvent(m); return; }
            LogLine("dropping " + m + ": no request in flight has that id (timed out or cancelled?)");
        }

        PendingRequest OversizedInFlight()
        {
            var ready = Ready;
            long limit = ready != null ? ready.MaxFrameBytes : 64 * 1024;
            PendingRequest best = null;
            lock (_lock)
                foreach (var p in _pending.Values)
                    if (p.Sent && p.Payload.Length > limit && (best == null || p.Order < best.Order)) best = p;
            return best;
        }

        // ---- requests --------------------------------------------------------------------------------------------

        string NewId() { return _idPrefix + Interlocked.Increment(ref _nextId).ToString(); }

        /// <summary>Registers a request and sends it now, or when the connection is (re)made.</summary>
        T Submit<T>(T p, Message msg, TimeSpan timeout) where T : PendingRequest
        {
            if (string.IsNullOrEmpty(msg.Id)) msg.Id = NewId();
            p.RequestId = msg.Id;
            p.What = msg.Type + " " + msg.Id;
            p.Payload = msg.Encode();
            p.TimeoutMs = (long)timeout.TotalMilliseconds;
            p.Order = Interlocked.Increment(ref _nextOrder);
            ITransport t;
            lock (_lock)
            {
                if (_closed)
                {
                    p.Fail(new SidecarDisconnectedException("the client is closed", p.RequestId), this);
                    return p;
                }
                if (_pending.ContainsKey(p.RequestId))
                    throw new ArgumentException("request id '" + p.RequestId + "' is already in flight");
                p.DeadlineMs = NowMs + p.TimeoutMs;
                _pending[p.RequestId] = p;
                StartReader();
                t = _transport;
                if (t == null) { _outbox.Enqueue(p); return p; }
                p.Sent = true;
            }
            try { t.Send(p.Payload); }
            catch (TransportClosedException) { t.Close(); }  // the reader notices the drop and fails p as disconnected
            return p;
        }

        /// <summary>Sends any request and returns its single reply (an error reply faults the task with the typed exception).</summary>
        public Task<Message> RequestAsync(Message request, TimeSpan? timeout = null)
        {
            return Submit(new ReplyRequest(), request, timeout ?? _opt.RequestTimeout).Tcs.Task;
        }

        Task<T> Expect<T>(Message request, TimeSpan? timeout = null) where T : Message
        {
            return RequestAsync(request, timeout).ContinueWith(t =>
            {
                if (t.IsFaulted) throw t.Exception.InnerException;
                var r = t.Result as T;
                if (r == null) throw new SidecarProtocolException(string.Format("{0} {1} answered with {2}", request.Type, request.Id, t.Result.Type), request.Id);
                return r;
            }, CancellationToken.None, TaskContinuationOptions.ExecuteSynchronously, TaskScheduler.Default);
        }

        /// <summary>Says hello (done automatically on every connect); completes with ready.</summary>
        public Task<Ready> HelloAsync(string clientName = null)
        {
            return Expect<Ready>(new Hello { Client = clientName ?? _opt.ClientName ?? "" }).ContinueWith(t =>
            {
                if (t.IsFaulted) throw t.Exception.InnerException;
                Ready = t.Result;
                return t.Result;
            }, CancellationToken.None, TaskContinuationOptions.ExecuteSynchronously, TaskScheduler.Default);
        }

        /// <summary>Streams an NPC's answer to a player's line (callback form). onChunk gets each chunk in seq order, then
        /// onAction each action the NPC takes (when it has a declaration, see <see cref="DeclareAsync"/>), then onDone the
        /// done message, or onError the failure (refused: UnknownNpcException, InvalidRequestException,
        /// FrameTooLargeException...; SidecarTimeoutException; SidecarDisconnectedException). Player text is sent as is.</summary>
        /// <returns>The stream: its Completion task, accumulated Text and Actions, and Cancel().</returns>
        /// <exception cref="ArgumentException">a <see cref="SayOptions.State"/> value that is not a bool, int, float or string.</exception>
        public SayStream Say(string npc, string text, SayOptions options = null, Action<Chunk> onChunk = null,
                             Action<Done> onDone = null, Action<SidecarException> onError = null, Action<NpcAction> onAction = null)
        {
            var o = options ?? new SayOptions();
            var s = new SayStream(this) { OnChunk = onChunk, OnAction = onAction, OnDone = onDone, OnError = onError };
            return Submit(s, SayMessage(npc, text, o), o.Timeout ?? _opt.StreamTimeout);
        }

        /// <summary>Streams an NPC's answer (task form): completes with the done message (Text: the whole line; Actions: the
        /// NPC's actions; Fields: the declared per-line fields); chunks go to <paramref name="onChunk"/> and actions to
        /// <paramref name="onAction"/> as they arrive. Faults with a <see cref="SidecarException"/>.</summary>
        public Task<Done> SayAsync(string npc, string text, SayOptions options = null, Action<Chunk> onChunk = null, Action<NpcAction> onAction = null)
        {
            return Say(npc, text, options, onChunk, null, null, onAction).Completion;
        }

        /// <summary>Tells NPCs that something happened in the game; completes with how many NPCs it reached (<c>ok.count</c>).
        /// Target: at most one of npc, npcs, location (the NPCs whose card names that place), faction; none: every NPC of the
        /// session. It enters each one's next turn. state: merged into the session's with it. Faults with UnknownNpcException
        /// or InvalidRequestException (an unknown location or faction, a bad state key).</summary>
        /// <exception cref="ArgumentException">more than one target, or a state value that is not a bool, int, float or string.</exception>
        public Task<long> EventAsync(string text, string session = null, string npc = null, IList<string> npcs = null,
                                     string location = null, string faction = null, IDictionary<string, object> state = null)
        {
            return Expect<Ok>(EventMessage(text, session, npc, npcs, location, faction, state)).ContinueWith(t =>
            {
                if (t.IsFaulted) throw t.Exception.InnerException;
                return t.Result.Count ?? 0;
            }, CancellationToken.None, TaskContinuationOptions.ExecuteSynchronously, TaskScheduler.Default);
        }

        /// <summary>Merges game state (flags, counters: key -> bool, int, float or string) into the session's, then removes the
        /// unset keys. Lore entries' <c>when:</c> conditions read it. It lives in the sidecar's memory: send it again after a
        /// restart (or with every say, <see cref="SayOptions.State"/>). Faults with InvalidRequestException naming a bad key or value.</summary>
        /// <exception cref="ArgumentException">a value that is not a bool, int, float or string.</exception>
        public Task SetStateAsync(IDictionary<string, object> values, IList<string> unset = null, string session = null)
        {
            return Expect<Ok>(StateMessage(values, unset, session));
        }

        /// <summary>Declares the actions an NPC may take and the per-line fields it gives with every line, for npc (null: every
        /// NPC) in session; replaces the earlier declaration of that scope (empty actions and fields remove it). Declare before
        /// the first say of the session. Then a say's actions arrive as <see cref="NpcAction"/>s (each a declared name, its
        /// arguments valid for the schema) and the fields in <see cref="Done.Fields"/>. Faults with UnsupportedSchemaException
        /// (the message names the action and the property), UnknownNpcException or InvalidRequestException.</summary>
        public Task DeclareAsync(IList<ActionSpec> actions, IDictionary<string, FieldSpec> fields = null, int maxActions = 1,
                                 string npc = null, string session = null)
        {
            return Expect<Ok>(DeclareMessage(actions, fields, maxActions, npc, session));
        }

        // what Say, EventAsync, SetStateAsync and DeclareAsync send (without the id), checked against the wire vectors by the tests

        internal static Say SayMessage(string npc, string text, SayOptions o)
        {
            if (npc == null) throw new ArgumentNullException("npc");
            if (text == null) throw new ArgumentNullException("text");
            return new Say
            {
                Npc = npc, Text = text, Session = o.Session, MaxTokens = o.MaxTokens, Temperature = o.Temperature, Seed = o.Seed,
                State = Message.StateMap(o.State, "state"),
            };
        }

        internal static GameEvent EventMessage(string text, string session, string npc, IList<string> npcs, string location, string faction,
                                               IDictionary<string, object> state)
        {
            if (text == null) throw new ArgumentNullException("text");
            int targets = (npc != null ? 1 : 0) + (npcs != null ? 1 : 0) + (location != null ? 1 : 0) + (faction != null ? 1 : 0);
            if (targets > 1) throw new ArgumentException("an event has at most one target: npc, npcs, location or faction");
            return new GameEvent
            {
                Text = text, Session = session, Npc = npc, Npcs = npcs != null ? new List<string>(npcs) : null, Location = location,
                Faction = faction, State = Message.StateMap(state, "state"),
            };
        }

        internal static State StateMessage(IDictionary<string, object> values, IList<string> unset, string session)
        {
            return new State
            {
                Session = session, Set = Message.StateMap(values, "set") ?? new MsgMap(),
                Unset = unset != null ? new List<string>(unset) : new List<string>(),
            };
        }

        internal static Declare DeclareMessage(IList<ActionSpec> actions, IDictionary<string, FieldSpec> fields, int maxActions, string npc, string session)
        {
            var msg = new Declare { Session = session, Npc = npc, MaxActions = maxActions };
            if (actions != null)
                foreach (var a in actions)
                {
                    if (a == null) throw new ArgumentException("actions: a null ActionSpec");
                    msg.Actions.Add(new ActionSpec(a.Name, a.Description, (MsgMap)Message.Tree(a.Parameters, "actions." + a.Name + ".parameters")));
                }
            if (fields != null)
                foreach (var kv in fields)
                {
                    if (kv.Value == null) throw new ArgumentException("fields." + kv.Key + ": a null FieldSpec");
                    msg.Fields[kv.Key] = new FieldSpec { Enum = new List<string>(kv.Value.Enum ?? new List<string>()), Description = kv.Value.Description ?? "" };
                }
            return msg;
        }

        /// <summary>Asks the sidecar to stop stream <paramref name="requestId"/> (it ends with done, finish_reason
        /// <c>cancelled</c>). No reply on success; an unknown or finished target gets UnknownRequestException in
        /// <paramref name="onError"/> (or the UnroutedError event).</summary>
        public void Cancel(string requestId, Action<SidecarException> onError = null)
        {
            if (requestId == null) throw new ArgumentNullException("requestId");
            Submit(new CancelRequest { OnError = onError }, new Cancel { Target = requestId }, _opt.RequestTimeout);
        }

        /// <summary>Round trip of a ping in ms (answered even while a model decodes).</summary>
        public Task<double> PingAsync(TimeSpan? timeout = null)
        {
            long t0 = Stopwatch.GetTimestamp();
            return Expect<Pong>(new Ping(), timeout).ContinueWith(t =>
            {
                if (t.IsFaulted) throw t.Exception.InnerException;
                return (Stopwatch.GetTimestamp() - t0) * 1000.0 / Stopwatch.Frequency;
            }, CancellationToken.None, TaskContinuationOptions.ExecuteSynchronously, TaskScheduler.Default);
        }

        /// <summary>Forgets one conversation's history (session: as in say; null: this connection's).</summary>
        public Task ResetAsync(string npc, string session = null)
        {
            return Expect<Ok>(new Reset { Npc = npc, Session = session });
        }

        /// <summary>Which lore entries a line would retrieve (with npc: that NPC's scope, prefix and token budget).</summary>
        public Task<LoreResult> LoreQueryAsync(string text, string npc = null)
        {
            return Expect<LoreResult>(new LoreQuery { Text = text, Npc = npc });
        }

        /// <summary>Why each lore entry is (or is not) in one turn; history: earlier lines, oldest first.</summary>
        public Task<LoreExplanation> LoreExplainAsync(string npc, string text, IList<string> history = null)
        {
            return Expect<LoreExplanation>(new LoreExplain { Npc = npc, Text = text, History = history != null ? new List<string>(history) : new List<string>() });
        }

        /// <summary>Generates one quest from a spec id (quest) or an inline spec map (spec): exactly one of them.
        /// Faults with UnknownQuestException, InvalidRequestException or GenerationFailedException.</summary>
        public Task<GenerateResult> GenerateAsync(string quest = null, MsgMap spec = null, long? seed = null, long? maxTokens = null, TimeSpan? timeout = null)
        {
            return Expect<GenerateResult>(new Generate { Quest = quest, Spec = spec, Seed = seed, MaxTokens = maxTokens }, timeout ?? _opt.GenerateTimeout);
        }

        /// <summary>Sends raw bytes as one frame, bypassing the codec (for tests of the sidecar's input checks).
        /// Replies (usually an error with id "?") arrive through UnroutedError unless their id is in flight.</summary>
        public void SendRaw(byte[] payload)
        {
            var t = Volatile.Read(ref _transport);
            if (t == null) throw new SidecarDisconnectedException("not connected", "");
            t.Send(payload);
        }

        // ---- plumbing --------------------------------------------------------------------------------------------

        internal void Invoke<T>(Action<T> cb, T arg, string what)
        {
            try { cb(arg); }
            catch (Exception e) { LogLine(what + " callback threw: " + e); }
        }

        void Raise<T>(Action<T> ev, T arg, string what)
        {
            if (ev != null) Invoke(ev, arg, what);
        }

        internal void RaiseEvent(Message m) { Raise(EventReceived, m, "EventReceived"); }

        internal void RaiseUnroutedError(SidecarException e)
        {
            if (UnroutedError != null) Invoke(UnroutedError, e, "UnroutedError");
            else LogLine("unrouted " + e.Message);
        }

        void LogLine(string s)
        {
            var log = _opt.Log;
            if (log != null) { try { log(s); } catch (Exception) { } }
        }

        void Shutdown(string reason)
        {
            List<PendingRequest> all;
            List<TaskCompletionSource<Ready>> waiters;
            lock (_lock)
            {
                _closed = true;
                all = new List<PendingRequest>(_pending.Values);
                _pending.Clear();
                _outbox.Clear();
                waiters = new List<TaskCompletionSource<Ready>>();
                foreach (var w in _connectWaiters) waiters.Add(w.Value);
                _connectWaiters.Clear();
            }
            foreach (var p in all) p.Fail(new SidecarDisconnectedException(reason, p.RequestId), this);
            foreach (var w in waiters) w.TrySetException(new SidecarDisconnectedException(reason, ""));
        }

        /// <summary>Closes the connection and stops the reader thread; requests in flight fail with SidecarDisconnectedException.</summary>
        public void Dispose()
        {
            if (_closed) return;
            ITransport t, a;
            Thread reader;
            lock (_lock)
            {
                t = _transport; a = _attempt; reader = _reader;
                _transport = null;
            }
            Shutdown("the client was closed");
            _wake.Set();
            if (t != null) t.Close();
            if (a != null) a.Close();
            if (reader != null && reader != Thread.CurrentThread) reader.Join(2000);
        }
    }
}
