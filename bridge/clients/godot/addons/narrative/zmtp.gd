extends RefCounted
## A ZeroMQ DEALER peer over one TCP connection: ZMTP 3.1 with the NULL mechanism.
##
## Spec: RFC 37/ZMTP 3.1, https://rfc.zeromq.org/spec/37/
##   - greeting: 64 bytes, signature %xFF 8*%x00 %x7F, version 3.1, mechanism
##     "NULL" zero-padded to 20 bytes, as-server 0, 31 filler zeros;
##   - NULL handshake: each side sends a READY command whose metadata names its
##     Socket-Type (we send "DEALER"; a DEALER may talk to ROUTER, DEALER, REP);
##     an ERROR command from the peer ends the connection;
##   - framing: flags byte (bit 0 MORE, bit 1 LONG, bit 2 COMMAND), then the
##     size in 1 byte (short) or 8 bytes network order (long), then the body;
##   - heartbeats: a PING command (TTL in tenths of a second + up to 16 bytes of
##     context) is answered by a PONG carrying the same context. We also send
##     PING ourselves when we have sent nothing for `heartbeat_ivl_s` (a live
##     peer answers with PONG, and a write to a reset connection fails), and
##     declare the peer dead when nothing at all arrives for `heartbeat_timeout_s`.
##
## Not polled by itself: the owner calls `poll()` every frame; it never blocks
## and returns what happened as events: ["ready", metadata], ["message", frames]
## (an Array of PackedByteArray, one per frame of a multipart message), and
## ["closed", reason] after which the object is done (open a new one).
##
## Wire layer: written in the GDScript subset that scripts/godot3_port.py ports
## to Godot 3 (see bridge/clients/godot/README.md).

enum State { CONNECTING, GREETING, HANDSHAKE, READY, CLOSED }

const FLAG_MORE := 0x01
const FLAG_LONG := 0x02
const FLAG_COMMAND := 0x04
const GREETING_SIZE := 64
## The largest frame we accept from the peer (the sidecar's replies are small).
const MAX_FRAME := 16 * 1024 * 1024

var state: int = State.CONNECTING
var heartbeat_ivl_s := 2.0
var heartbeat_timeout_s := 10.0
var connect_timeout_s := 5.0
## ZMTP PINGs from the peer answered with PONG (a count, for tests and stats).
var pings_answered := 0

var _tcp := StreamPeerTCP.new()
var _in := PackedByteArray()
var _pos := 0
var _frames := []
var _events := []
var _opened_ms := 0
var _last_in_ms := 0
var _last_out_ms := 0


## Starts connecting to `host`:`port` (an IP address or a host name).
func open(host: String, port: int) -> void:
	_opened_ms = Time.get_ticks_msec()
	_last_in_ms = _opened_ms
	_last_out_ms = _opened_ms
	var err := _tcp.connect_to_host(host, port)
	if err != OK:
		_close("cannot connect to %s:%d (error %d)" % [host, port, err])
		return
	_tcp.set_no_delay(true)


func is_ready() -> bool:
	return state == State.READY


## Closes the connection; poll() then reports nothing more.
func close() -> void:
	_tcp.disconnect_from_host()
	state = State.CLOSED


## Sends one message (one frame per PackedByteArray in `frames`). False when
## the connection is not ready or the write failed (then poll() reports "closed").
func send(frames: Array) -> bool:
	if state != State.READY:
		return false
	var out := StreamPeerBuffer.new()
	out.big_endian = true
	for i in frames.size():
		var body: PackedByteArray = frames[i]
		_put_frame(out, 0 if i == frames.size() - 1 else FLAG_MORE, body)
	return _write(out.data_array)


## Advances the connection: reads what arrived, answers heartbeats. Returns the
## events since the last call (see the class doc).
func poll() -> Array:
	if state == State.CLOSED:
		return _take_events()
	_tcp.poll()  # godot3: pass
	var st := _tcp.get_status()
	var now := Time.get_ticks_msec()
	if state == State.CONNECTING:
		if st == StreamPeerTCP.STATUS_CONNECTED:
			state = State.GREETING
			_write(_greeting())
		elif st == StreamPeerTCP.STATUS_CONNECTING:
			if now - _opened_ms > int(connect_timeout_s * 1000):
				_close("connect timed out")
			return _take_events()
		else:
			_close("connection refused")
			return _take_events()
	if st != StreamPeerTCP.STATUS_CONNECTED:
		_close("connection lost")
		return _take_events()
	_read()
	_parse()
	if state == State.READY:
		_heartbeat(now)
	elif state != State.CLOSED and now - _opened_ms > int(connect_timeout_s * 1000):
		_close("ZMTP handshake timed out")
	return _take_events()


func _take_events() -> Array:
	var ev := _events
	_events = []
	return ev


func _close(reason: String) -> void:
	if state == State.CLOSED:
		return
	_tcp.disconnect_from_host()
	state = State.CLOSED
	_events.append(["closed", reason])


func _write(bytes: PackedByteArray) -> bool:
	var err := _tcp.put_data(bytes)
	if err != OK:
		_close("write failed (error %d)" % err)
		return false
	_last_out_ms = Time.get_ticks_msec()
	return true


func _read() -> void:
	var n := _tcp.get_available_bytes()
	if n <= 0:
		return
	var r: Array = _tcp.get_partial_data(n)
	if r[0] != OK:
		_close("read failed (error %d)" % r[0])
		return
	var got: PackedByteArray = r[1]
	if got.size() > 0:
		_in.append_array(got)
		_last_in_ms = Time.get_ticks_msec()


func _heartbeat(now: int) -> void:
	if now - _last_in_ms > int(heartbeat_timeout_s * 1000):
		_close("no traffic from the peer for %d ms (heartbeat timeout)" % (now - _last_in_ms))
	elif now - _last_out_ms > int(heartbeat_ivl_s * 1000):
		# PING: TTL (2 bytes, tenths of a second), empty context
		var ping := StreamPeerBuffer.new()
		ping.big_endian = true
		ping.put_u8(4)
		ping.put_data("PING".to_ascii_buffer())
		ping.put_u16(int(heartbeat_timeout_s * 10))
		_send_command(ping.data_array)


## 64-byte greeting (RFC 37 section "The Greeting").
func _greeting() -> PackedByteArray:
	var g := PackedByteArray()
	g.resize(GREETING_SIZE)
	for i in GREETING_SIZE:
		g[i] = 0
	g[0] = 0xff
	g[9] = 0x7f
	g[10] = 3  # version major
	g[11] = 1  # version minor
	var mech := "NULL".to_ascii_buffer()
	for i in mech.size():
		g[12 + i] = mech[i]
	# g[32] as-server = 0; g[33..63] filler
	return g


func _ready_command() -> PackedByteArray:
	var c := StreamPeerBuffer.new()
	c.big_endian = true
	c.put_u8(5)
	c.put_data("READY".to_ascii_buffer())
	var name := "Socket-Type".to_ascii_buffer()
	var value := "DEALER".to_ascii_buffer()
	c.put_u8(name.size())
	c.put_data(name)
	c.put_u32(value.size())
	c.put_data(value)
	return c.data_array


func _send_command(body: PackedByteArray) -> void:
	var out := StreamPeerBuffer.new()
	out.big_endian = true
	_put_frame(out, FLAG_COMMAND, body)
	_write(out.data_array)


func _put_frame(out: StreamPeerBuffer, flags: int, body: PackedByteArray) -> void:
	if body.size() > 255:
		out.put_u8(flags | FLAG_LONG)
		out.put_u64(body.size())
	else:
		out.put_u8(flags)
		out.put_u8(body.size())
	if body.size() > 0:
		out.put_data(body)


func _parse() -> void:
	if state == State.GREETING:
		if _in.size() - _pos < GREETING_SIZE:
			return
		if _in[_pos] != 0xff or _in[_pos + 9] != 0x7f or _in[_pos + 10] < 3:
			_close("the peer is not a ZMTP 3 peer")
			return
		var mech := _ascii(_in, _pos + 12, _pos + 32)
		if mech != "NULL":
			_close("the peer wants security mechanism %s (only NULL is supported)" % mech)
			return
		_pos += GREETING_SIZE
		state = State.HANDSHAKE
		_send_command(_ready_command())
	while state == State.HANDSHAKE or state == State.READY:
		if not _parse_frame():
			break
	_compact()


## Parses one frame at _pos if it is complete. False when more bytes are needed.
func _parse_frame() -> bool:
	var left := _in.size() - _pos
	if left < 2:
		return false
	var flags: int = _in[_pos]
	var size := 0
	var head := 2
	if (flags & FLAG_LONG) != 0:
		head = 9
		if left < head:
			return false
		for i in 8:
			size = (size << 8) | _in[_pos + 1 + i]
	else:
		size = _in[_pos + 1]
	if size < 0 or size > MAX_FRAME:
		_close("frame of %d bytes is over the limit" % size)
		return false
	if left < head + size:
		return false
	var body := PackedByteArray()
	if size > 0:
		body = _slice(_in, _pos + head, _pos + head + size)
	_pos += head + size
	if (flags & FLAG_COMMAND) != 0:
		_on_command(body)
	elif state != State.READY:
		_close("a message frame arrived before the handshake ended")
	else:
		_frames.append(body)
		if (flags & FLAG_MORE) == 0:
			_events.append(["message", _frames])
			_frames = []
	return true


func _on_command(body: PackedByteArray) -> void:
	if body.size() < 1 or body.size() < 1 + body[0]:
		_close("malformed command")
		return
	var name_size: int = body[0]
	var name := _ascii(body, 1, 1 + name_size)
	var data := PackedByteArray()
	if body.size() > 1 + name_size:
		data = _slice(body, 1 + name_size, body.size())
	if name == "READY" and state == State.HANDSHAKE:
		var meta := _parse_metadata(data)
		var peer_type: String = meta.get("Socket-Type", "")
		if peer_type != "ROUTER" and peer_type != "DEALER" and peer_type != "REP":
			_close("a DEALER cannot talk to a %s socket" % peer_type)
			return
		state = State.READY
		_events.append(["ready", meta])
	elif name == "ERROR":
		var reason := ""
		if data.size() > 0:
			reason = _ascii(data, 1, data.size())
		_close("the peer refused the handshake: %s" % reason)
	elif name == "PING":  # data: TTL (2 bytes), then the context we echo
		var pong := StreamPeerBuffer.new()
		pong.big_endian = true
		pong.put_u8(4)
		pong.put_data("PONG".to_ascii_buffer())
		if data.size() > 2:
			pong.put_data(_slice(data, 2, data.size()))
		_send_command(pong.data_array)
		pings_answered += 1
	# PONG and unknown commands: nothing to do (any traffic counts as liveness)


## READY metadata: name-size (1 byte), name, value-size (4 bytes), value; repeated.
func _parse_metadata(data: PackedByteArray) -> Dictionary:
	var meta := {}
	var i := 0
	while i < data.size():
		var n: int = data[i]
		if i + 1 + n + 4 > data.size():
			break
		var key := _ascii(data, i + 1, i + 1 + n)
		i += 1 + n
		var vn := (data[i] << 24) | (data[i + 1] << 16) | (data[i + 2] << 8) | data[i + 3]
		i += 4
		if i + vn > data.size():
			break
		meta[key] = _ascii(data, i, i + vn)
		i += vn
	return meta


## Text of data[from, to), up to the first zero byte (names are zero-padded in the greeting).
static func _ascii(data: PackedByteArray, from: int, to: int) -> String:
	var end := from
	while end < to and data[end] != 0:
		end += 1
	return _slice(data, from, end).get_string_from_utf8()


## data[from, to) as a new array (empty when to <= from).
static func _slice(data: PackedByteArray, from: int, to: int) -> PackedByteArray:
	if to <= from:
		return PackedByteArray()
	return data.slice(from, to)  # godot3: return data.subarray(from, to - 1)


## Drops the parsed prefix of the input buffer.
func _compact() -> void:
	if _pos == 0:
		return
	if _pos >= _in.size():
		_in = PackedByteArray()
	else:
		_in = _slice(_in, _pos, _in.size())
	_pos = 0
