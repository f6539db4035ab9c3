class_name NarrativeClient
extends Node
## Talks to a narrative sidecar (bridge/PROTOCOL.md) from a Godot game.
##
## Add the node, set `endpoint`, call `say()`; NPC lines arrive as `chunk`
## signals, then the NPC's actions as `npc_action` signals (when its actions
## are declared with `declare()`), then one `done`. Polled from `_process` over
## StreamPeerTCP (never blocks a frame): ZMTP 3.1 (zmtp.gd) carries msgpack
## maps (msgpack.gd). `event()` tells NPCs what happened, `set_state()` keeps
## the game's flags and counters in the sidecar.
##
## Every request method returns the request id at once. Every request then
## ends with exactly one `done(id, message)` (message: the sidecar's terminal
## reply as a Dictionary: `done` for say, `pong`, `ok`, `lore.result`, ...) or
## one `error(id, code, message)`. Error codes are PROTOCOL.md's
## (`unknown_npc`, `invalid`, ...) plus three raised by this client:
## `disconnected` (the connection dropped while the request was in flight; it
## is never sent again), `timeout` (no reply or chunk for `request_timeout_s`)
## and `encode` (a value msgpack cannot carry). While `error` is emitted,
## `last_error` holds it as a map with `retry_after_ms` (see `last_error`).
##
## Requests made before the connection is ready wait in a queue and are sent
## once `hello`/`ready` is through. The connection reconnects by itself with
## exponential backoff (`reconnect_min_s` doubling up to `reconnect_max_s`).
##
## Wire layer: written in the GDScript subset that scripts/godot3_port.py
## ports to Godot 3 (see bridge/clients/godot/README.md).

## A piece of request `id`'s NPC line; `seq` counts from 0.
signal chunk(id: String, seq: int, text: String)
## An action the NPC of say `id` takes at the end of its line (after the last
## `chunk`, before `done`): a declared `name`, `args` valid for its schema.
signal npc_action(id: String, name: String, args: Dictionary)
## Request `id` ended well; `message` is the terminal reply map.
signal done(id: String, message: Dictionary)
## Request `id` failed; `code` is a PROTOCOL.md code or disconnected/timeout/encode.
signal error(id: String, code: String, message: String)
## `pong` for a `ping()`: round trip in ms (also ends the request with `done`).
signal pong(id: String, rtt_ms: float)
## The handshake and `hello`/`ready` are through; see `server_info`.
signal connected
## The connection dropped (or could not be made); a reconnect is scheduled.
signal disconnected(reason: String)
## `lore.changed` / `lore.error` events the sidecar pushes unasked.
signal lore_event(message: Dictionary)

const Msgpack = preload("msgpack.gd")
const Zmtp = preload("zmtp.gd")
const PROTOCOL_VERSION := 1
const SAY_OPTIONS := ["session", "max_tokens", "temperature", "seed", "state"]
const EVENT_OPTIONS := ["session", "npc", "npcs", "location", "faction", "state"]
const DECLARE_OPTIONS := ["session", "npc"]

## The sidecar's ROUTER endpoint, as `narrative serve` prints it.
@export var endpoint := "tcp://127.0.0.1:5555"
## Sent in `hello`, for the sidecar's logs.
@export var client_name := "godot"
## Connect in `_ready`; otherwise call `open()`.
@export var auto_connect := true
## Longest wait for a request's reply or its next chunk, in seconds.
@export var request_timeout_s := 60.0
@export var reconnect_min_s := 0.25
@export var reconnect_max_s := 5.0
## No bytes from the sidecar for this long: the connection is dead (the
## sidecar sends ZMTP heartbeats every 2 s, and so do we).
@export var heartbeat_timeout_s := 10.0

## The `ready` map of the current connection ({} while not connected).
var server_info := {}
## Connections made so far (1 after the first, +1 per reconnect).
var connections := 0
## The error being (or last) emitted by the `error` signal, as a map: `id`,
## `code`, `message` and `retry_after_ms` (int, with code `busy`: wait at least
## this long before sending the request again; null when the sidecar sent
## none, and for the client's own codes). Read it in your `error` handler.
var last_error := {}

var _conn = null
var _next_id := 0
var _pending := {}  # id -> {"type", "deadline_ms", "sent_ms", "sent"}
var _queue := []  # [id, bytes] waiting for the connection
var _hello_id := ""
var _open := false
var _backoff_s := 0.0
var _retry_at_ms := 0
var _down_reported := false


func _ready() -> void:
	if auto_connect:
		open()


func _process(_delta: float) -> void:
	poll()


## Starts connecting (and keeps reconnecting until `close()`). No-op when open.
func open() -> void:
	if _open and _conn != null:
		return
	_open = true
	_backoff_s = reconnect_min_s
	_connect_now()


## Closes the connection; in-flight and queued requests get `disconnected`.
func close() -> void:
	_open = false
	_drop("closed by the client")


func is_connected_to_sidecar() -> bool:
	return _conn != null and _hello_id == "" and not server_info.is_empty()


## Sends `text` to NPC `npc`. `options`: session, max_tokens, temperature,
## seed, state (PROTOCOL.md `say`) and timeout_s (this request's timeout).
## Returns the request id; the line arrives as `chunk` signals, then
## `npc_action` signals, then `done` (its `action_list` holds the actions).
func say(npc: String, text: String, options := {}) -> String:
	return request("say", say_fields(npc, text, options), options.get("timeout_s", request_timeout_s))


## Tells NPCs that something happened in the game. `options`: session, at
## most one target of npc, npcs (an Array of ids), location, faction (lore
## entry ids; none: every NPC), state (merged into the session's), timeout_s.
## Ends with `done` (an `ok` map whose `count` is how many NPCs it reached);
## it enters each one's next turn.
func event(text: String, options := {}) -> String:
	var timeout_s: float = options.get("timeout_s", request_timeout_s)
	return request("event", event_fields(text, options), timeout_s)


## Merges `values` (key -> bool, int, float or String) into the session's
## game state, then removes the `unset` keys. Ends with `done` (an `ok`).
func set_state(values: Dictionary, unset := [], session := "") -> String:
	return request("state", state_fields(values, unset, session))


## Declares the actions (`[{name, description, parameters}]`, parameters: a
## JSON Schema Dictionary) and per-line fields (`{name: {enum, description}}`)
## of an NPC. `options`: session, npc (none: every NPC of the session),
## max_actions (0..4, default 1), timeout_s. Declare before the first `say`
## of the session. Ends with `done` (an `ok`) or `error` unsupported_schema.
func declare(actions: Array, fields := {}, options := {}) -> String:
	var timeout_s: float = options.get("timeout_s", request_timeout_s)
	return request("declare", declare_fields(actions, fields, options), timeout_s)


## Stops stream `id`; it then ends with `done` (finish_reason `cancelled`).
## Returns the cancel request's own id (it gets `error` unknown_request when
## the stream had already ended; no reply otherwise).
func cancel(id: String) -> String:
	return request("cancel", {"target": id}, 0.0)


## Liveness; ends with `pong` and `done`.
func ping() -> String:
	return request("ping", {})


## Forgets one conversation's history; ends with `done` (an `ok` message).
func reset(npc: String, session := "") -> String:
	var fields := {"npc": npc}
	if session != "":
		fields["session"] = session
	return request("reset", fields)


## Which lore entries `text` would retrieve; ends with `done` (`lore.result`).
func lore_query(text: String, npc := "") -> String:
	var fields := {"text": text}
	if npc != "":
		fields["npc"] = npc
	return request("lore.query", fields)


## The fields of a `say` (the protocol's order), from `say()`'s arguments.
static func say_fields(npc: String, text: String, options: Dictionary) -> Dictionary:
	return _with_options({"npc": npc, "text": text}, options, SAY_OPTIONS, "say")


## The fields of an `event`, from `event()`'s arguments.
static func event_fields(text: String, options: Dictionary) -> Dictionary:
	return _with_options({"text": text}, options, EVENT_OPTIONS, "event")


## The fields of a `state`, from `set_state()`'s arguments.
static func state_fields(values: Dictionary, unset: Array, session: String) -> Dictionary:
	var fields := {}
	if session != "":
		fields["session"] = session
	fields["set"] = values
	fields["unset"] = unset
	return fields


## The fields of a `declare`, from `declare()`'s arguments.
static func declare_fields(
	actions: Array, fields: Dictionary, options: Dictionary
) -> Dictionary:
	var out := _with_options({}, options, DECLARE_OPTIONS, "declare", ["max_actions"])
	out["actions"] = actions
	out["fields"] = fields
	out["max_actions"] = options.get("max_actions", 1)
	return out


## The full message map: v, id, type, then `fields` in their order.
static func message(id: String, msg_type: String, fields: Dictionary) -> Dictionary:
	var msg := {"v": PROTOCOL_VERSION, "id": id, "type": msg_type}
	for key in fields.keys():
		msg[key] = fields[key]
	return msg


## `fields` plus the `known` keys of `options`, in the order of `known`; a key
## neither known, `timeout_s` nor in `also` is not sent (a warning says so).
static func _with_options(
	fields: Dictionary, options: Dictionary, known: Array, what: String, also := []
) -> Dictionary:
	for key in known:
		if options.has(key):
			fields[key] = options[key]
	for key in options.keys():
		if not (key in known or key in also or key == "timeout_s"):
			push_warning("NarrativeClient.%s: unknown option '%s' not sent" % [what, key])
	return fields


## Sends any request type of PROTOCOL.md with `fields`; returns its id.
## `timeout_s` 0 means the request expects no reply (cancel).
func request(msg_type: String, fields: Dictionary, timeout_s := -1.0) -> String:
	if timeout_s < 0.0:
		timeout_s = request_timeout_s
	_next_id += 1
	var id := "gd-%d" % _next_id
	var msg := message(id, msg_type, fields)
	var now := Time.get_ticks_msec()
	var timeout_ms := int(timeout_s * 1000)
	_pending[id] = {
		"type": msg_type,
		"sent_ms": now,
		"timeout_ms": timeout_ms,
		"deadline_ms": now + timeout_ms,
		"actions": [],
	}
	var enc: Array = Msgpack.encode(msg)
	if enc[1] != "":
		# reported on the next poll, once the caller has the id
		_pending[id]["failed"] = ["encode", enc[1]]
		return id
	if is_connected_to_sidecar():
		_send(id, enc[0])
	else:
		_queue.append([id, enc[0]])
	return id


## Polls the connection once (called from `_process`; call it yourself when
## the node is not in a tree or processing is off).
func poll() -> void:
	var now := Time.get_ticks_msec()
	if _conn == null:
		if _open and now >= _retry_at_ms:
			_connect_now()
	if _conn != null:
		for ev in _conn.poll():
			_on_event(ev)
	_expire(Time.get_ticks_msec())


func _connect_now() -> void:
	var hp := _host_port(endpoint)
	if hp.is_empty():
		push_error("NarrativeClient: endpoint must look like tcp://HOST:PORT, not '%s'" % endpoint)
		_open = false
		return
	_conn = Zmtp.new()
	_conn.heartbeat_timeout_s = heartbeat_timeout_s
	_conn.open(hp[0], hp[1])


func _on_event(ev: Array) -> void:
	var kind: String = ev[0]
	if kind == "ready":
		connections += 1
		_next_id += 1
		_hello_id = "gd-%d" % _next_id
		var hello := {"v": PROTOCOL_VERSION, "id": _hello_id, "type": "hello", "client": client_name}
		_conn.send([Msgpack.encode(hello)[0]])
	elif kind == "message":
		var frames: Array = ev[1]
		if frames.size() != 1:
			push_warning("NarrativeClient: ignored a message of %d frames" % frames.size())
			return
		var r: Array = Msgpack.decode(frames[0])
		if r[1] != "" or typeof(r[0]) != TYPE_DICTIONARY:
			push_warning("NarrativeClient: ignored an undecodable message (%s)" % r[1])
			return
		_on_message(r[0])
	elif kind == "closed":
		_drop(ev[1])


func _on_message(msg: Dictionary) -> void:
	var id := str(msg.get("id", ""))
	var msg_type := str(msg.get("type", ""))
	if id == _hello_id and _hello_id != "":
		_hello_id = ""
		if msg_type != "ready":
			_drop("hello refused: %s" % msg.get("message", msg_type))
			return
		server_info = msg
		_backoff_s = reconnect_min_s
		_down_reported = false
		var queued := _queue
		_queue = []
		for item in queued:
			if _pending.has(item[0]):
				_send(item[0], item[1])
		emit_signal("connected")
		return
	if msg_type == "lore.changed" or msg_type == "lore.error":
		emit_signal("lore_event", msg)
		return
	if msg_type == "error":
		_pending.erase(id)
		var retry = msg.get("retry_after_ms")
		if typeof(retry) != TYPE_INT:
			retry = null
		_fail(id, str(msg.get("code", "")), str(msg.get("message", "")), retry)
		return
	if not _pending.has(id):
		return  # a late reply to a request that timed out
	var req: Dictionary = _pending[id]
	if msg_type == "chunk" or msg_type == "action":
		_on_stream_part(id, req, msg)
		return
	_pending.erase(id)
	if msg_type == "done":  # the turn's actions, [{seq, name, args}] (not on the wire)
		msg["action_list"] = req["actions"]
	if msg_type == "pong":
		emit_signal("pong", id, float(Time.get_ticks_msec() - req["sent_ms"]))
	emit_signal("done", id, msg)


## A `chunk` or an `action` of say `id`: the stream goes on (its timeout
## restarts); actions are kept for `done`'s `action_list`.
func _on_stream_part(id: String, req: Dictionary, msg: Dictionary) -> void:
	req["deadline_ms"] = Time.get_ticks_msec() + req["timeout_ms"]
	if msg.get("type") == "chunk":
		emit_signal("chunk", id, msg.get("seq", 0), str(msg.get("text", "")))
		return
	var args = msg.get("args", {})
	if typeof(args) != TYPE_DICTIONARY:
		args = {}
	var action := {"seq": msg.get("seq", 0), "name": str(msg.get("name", "")), "args": args}
	req["actions"].append(action)
	emit_signal("npc_action", id, action["name"], args)


func _send(id: String, payload: PackedByteArray) -> void:
	var req: Dictionary = _pending[id]
	req["sent"] = true
	req["sent_ms"] = Time.get_ticks_msec()
	req["deadline_ms"] = req["sent_ms"] + req["timeout_ms"]
	if req["timeout_ms"] == 0:
		_pending.erase(id)  # cancel: no reply unless it fails
	if not _conn.send([payload]):
		_drop("send failed")


## The connection is gone: every sent request fails with `disconnected` (never
## resent); queued ones wait for the next connection. Schedules a reconnect.
func _drop(reason: String) -> void:
	var was_up := not server_info.is_empty()
	if _conn != null:
		_conn.close()
	_conn = null
	_hello_id = ""
	server_info = {}
	for id in _pending.keys():
		if _pending[id].get("sent", false) or not _open:
			_pending.erase(id)
			_fail(id, "disconnected", "connection to the sidecar lost: %s" % reason)
	if not _open:
		_queue = []
	else:
		_retry_at_ms = Time.get_ticks_msec() + int(_backoff_s * 1000)
		_backoff_s = minf(_backoff_s * 2.0, reconnect_max_s)
	if was_up or not _down_reported:
		_down_reported = true
		emit_signal("disconnected", reason)


func _expire(now: int) -> void:
	for id in _pending.keys():
		var req: Dictionary = _pending[id]
		if req.has("failed"):
			_pending.erase(id)
			_fail(id, req["failed"][0], req["failed"][1])
		elif req["timeout_ms"] > 0 and now > req["deadline_ms"]:
			_pending.erase(id)
			if req.get("sent", false) and req["type"] == "say" and is_connected_to_sidecar():
				request("cancel", {"target": id}, 0.0)  # free the model; its done is ignored
			_fail(id, "timeout", "no reply in %d ms" % req["timeout_ms"])


## Emits `error` for request `id`, with `last_error` set to it first.
func _fail(id: String, code: String, message: String, retry_after_ms = null) -> void:
	last_error = {"id": id, "code": code, "message": message, "retry_after_ms": retry_after_ms}
	emit_signal("error", id, code, message)


## "tcp://host:port" -> [host, port]; [] when it is not a TCP endpoint.
static func _host_port(ep: String) -> Array:
	if not ep.begins_with("tcp://"):
		return []
	var rest := ep.substr(6)
	var colon := rest.rfind(":")
	if colon <= 0:
		return []
	var port := rest.substr(colon + 1).to_int()
	if port <= 0 or port > 65535:
		return []
	var host := rest.substr(0, colon)
	if host == "localhost" or host == "*":
		host = "127.0.0.1"
	return [host, port]
