extends Node
## Test driver for the Godot client, run by tests/clients/test_godot_client.py.
##
## Written in the portable subset (scripts/godot3_port.py) like the addon, and run
## ported under godot3-server. Reads NARRATIVE_MODE ("vectors", "session" or "actions"),
## NARRATIVE_ENDPOINT and NARRATIVE_NPC from the environment; prints one event
## per line as "@@ <json>" for the Python side to check; quits with 0, or 1 on
## a failure it sees itself.

const Msgpack = preload("res://addons/narrative/msgpack.gd")
const ClientScript = preload("res://addons/narrative/narrative_client.gd")
const Vectors = preload("res://vectors.gd")
const DEADLINE_MS := 1200000
const LONG_LINE := "Tell me everything about the Long Smoulder, slowly and in detail."
const ACTIONS := [
	{
		"name": "give_item",
		"description": "Hand the player an item from behind the bar.",
		"parameters": {
			"type": "object",
			"properties": {"item": {"type": "string", "enum": ["ale", "room key"]}},
			"required": ["item"],
		},
	},
	{"name": "open_shop", "description": "Show the player what the inn sells.", "parameters": {"type": "object", "properties": {}}},
]
const FIELDS := {"emotion": {"enum": ["neutral", "warm", "wary"], "description": "Her face while she speaks."}}
const ACTIONS_SESSION := "godot-actions"

var client: Node = null
var step := 0
var t0_us := 0
var want_id := ""
var idle_until_ms := 0
var cancel_id := ""
var pings_before_idle := 0
var mode := ""
var vec_log := []
var vec_log_errors := []
var vec_client: Node = null


func _ready() -> void:
	t0_us = Time.get_ticks_usec()
	mode = OS.get_environment("NARRATIVE_MODE")
	if mode == "vectors":
		run_vectors()
		run_built_requests()
		run_stream()
		run_errors()
		get_tree().quit(0)
		return
	client = ClientScript.new()
	client.endpoint = OS.get_environment("NARRATIVE_ENDPOINT")
	client.client_name = "godot3-test-runner"
	client.request_timeout_s = 600.0  # a first turn on a loaded 2-core CI box can take minutes
	client.chunk.connect(_on_chunk)
	client.npc_action.connect(_on_action)
	client.done.connect(_on_done)
	client.error.connect(_on_error)
	client.pong.connect(_on_pong)
	client.connected.connect(_on_connected)
	client.disconnected.connect(_on_disconnected)
	add_child(client)
	report("start", {"endpoint": client.endpoint})


func _process(_delta: float) -> void:
	if Time.get_ticks_usec() - t0_us > DEADLINE_MS * 1000:
		fail("deadline passed at step %d" % step)
	if step == 8 and Time.get_ticks_msec() >= idle_until_ms:
		var answered: int = client.get("_conn").pings_answered - pings_before_idle
		client.get("_conn").heartbeat_ivl_s = 2.0
		report("idle_end", {"zmtp_pings_answered": answered, "connections": client.connections})
		step = 9
		want_id = client.ping()


func ms() -> float:
	return (Time.get_ticks_usec() - t0_us) / 1000.0


func report(ev: String, fields: Dictionary) -> void:
	var line := {"ev": ev, "t_ms": ms(), "step": step}
	for k in fields.keys():
		line[k] = fields[k]
	print("@@ " + dump(line))


func fail(why: String) -> void:
	report("fail", {"why": why})
	get_tree().quit(1)


func npc() -> String:
	return OS.get_environment("NARRATIVE_NPC")


# ---- the scripted session: each step starts when the previous one ended ----


func _on_connected() -> void:
	report("connected", {"npcs": client.server_info.get("npcs", []), "limits": client.server_info.get("limits", {}), "connections": client.connections})
	if mode == "actions" and step == 0:
		step = 20
		want_id = client.declare(ACTIONS, FIELDS, {"session": ACTIONS_SESSION})
	elif step == 0:
		step = 1
		want_id = client.ping()
	elif step == 10:
		step = 11
		want_id = client.say(npc(), LONG_LINE, {"max_tokens": 200, "temperature": 1.0, "session": "godot-restart"})
	elif step == 11:
		step = 12
		want_id = client.say(npc(), "Are you still there?", {"max_tokens": 12, "seed": 3})


func _on_disconnected(reason: String) -> void:
	report("disconnected", {"reason": reason})


func _on_pong(id: String, rtt_ms: float) -> void:
	report("pong", {"id": id, "rtt_ms": rtt_ms})


func _on_action(id: String, name: String, args: Dictionary) -> void:
	report("npc_action", {"id": id, "name": name, "args": args})


func _on_chunk(id: String, seq: int, text: String) -> void:
	report("chunk", {"id": id, "seq": seq, "text": text})
	if id != want_id:
		return
	if step == 5 and seq == 0:
		report("ping_during_decode", {"ping_id": client.ping()})
	elif step == 5 and seq == 2:
		cancel_id = client.cancel(id)
		report("cancel_sent", {"target": id, "cancel_id": cancel_id})
	elif step == 10 and seq == 0:
		report("cut_me", {})
	elif step == 11 and seq == 0:
		report("restart_me", {})


func _on_done(id: String, message: Dictionary) -> void:
	report("done", {"id": id, "message": message})
	if id != want_id:
		return
	if mode == "actions":
		_actions_step()
	elif step == 1:
		step = 3
		want_id = client.say(npc(), "Good evening. What is the Cracked Bellows famous for?", {"max_tokens": 24, "seed": 1, "session": "godot-1"})
	elif step == 3:
		step = 4
		want_id = client.say("the-king", "Hello?")
	elif step == 5:
		step = 6
		want_id = client.reset(npc(), "godot-cancel")
	elif step == 6:
		step = 7
		want_id = client.lore_query("Any news of the missing barge?", npc())
	elif step == 7:
		step = 8
		client.get("_conn").heartbeat_ivl_s = 1000.0  # only the sidecar's PINGs (answered with PONG) keep us alive now
		pings_before_idle = client.get("_conn").pings_answered
		idle_until_ms = Time.get_ticks_msec() + int(OS.get_environment("NARRATIVE_IDLE_S").to_float() * 1000)
		report("idle_start", {})
	elif step == 9:
		step = 10
		want_id = client.say(npc(), LONG_LINE, {"max_tokens": 200, "temperature": 1.0, "session": "godot-cut"})
	elif step == 11:
		report("stream_ended_by_restart", {})  # a graceful sidecar stop ends its streams; _on_connected goes on
	elif step == 12:
		report("finished", {})
		get_tree().quit(0)


func _on_error(id: String, code: String, message: String) -> void:
	report("error", {"id": id, "code": code, "message": message})
	if id != want_id:
		return
	if mode == "actions" and ((step == 24 and code == "invalid") or (step == 25 and code == "unsupported_schema")):
		_actions_step()
	elif step == 4 and code == "unknown_npc":
		step = 13
		want_id = client.say(npc(), "Quick!", {"max_tokens": 8, "timeout_s": 0.05, "session": "godot-timeout"})
	elif step == 13 and code == "timeout":
		step = 5
		want_id = client.say(npc(), LONG_LINE, {"max_tokens": 200, "temperature": 1.0, "session": "godot-cancel"})
	elif (step == 10 or step == 11) and code == "disconnected":
		report("waiting_for_reconnect", {})  # _on_connected goes on
	else:
		fail("unexpected error at step %d: %s" % [step, code])


# ---- actions, events and state against the real sidecar ----


## The next step of the "actions" run: declare (20) -> event (21) -> say (22)
## -> set_state (23) -> a bad state key (24) -> an unsupported schema (25) -> end.
func _actions_step() -> void:
	step += 1
	if step == 21:
		want_id = client.event("The player paid Odile ten silver marks.", {"session": ACTIONS_SESSION, "npc": npc()})
	elif step == 22:
		var line := "A room for the night, please, and an ale."
		want_id = client.say(npc(), line, {"session": ACTIONS_SESSION, "max_tokens": 48, "temperature": 0.7, "seed": 2})
	elif step == 23:
		var values := {"quest.heron": "started", "gold": 12, "night": true, "rep": 0.5}
		want_id = client.set_state(values, ["moon"], "godot-state")
	elif step == 24:
		want_id = client.set_state({"bad key!": 1}, [], "godot-state")
	elif step == 25:
		var bad := [{"name": "throw", "parameters": {"type": "object", "properties": {"target": {"type": "object"}}}}]
		want_id = client.declare(bad, {}, {"session": "godot-bad"})
	else:
		report("finished", {})
		get_tree().quit(0)


# ---- codec checks against the shared vectors ----


func run_vectors() -> void:
	for v in Vectors.VECTORS:
		var raw := unhex(v[1])
		var r: Array = Msgpack.decode(raw)
		var enc: Array = Msgpack.encode(r[0])
		var truncated_ok := true
		for cut in raw.size():
			var part := PackedByteArray()
			for i in cut:
				part.append(raw[i])
			var pr: Array = Msgpack.decode(part)
			if pr[1] == "":
				truncated_ok = false
		report("vector", {"type": v[0], "error": r[1], "value": r[0], "reencoded": enc[0].hex_encode(), "truncated_all_refused": truncated_ok})
	for value in Vectors.ENCODE_CASES:
		var enc: Array = Msgpack.encode(value)
		var back: Array = Msgpack.decode(enc[0])
		report("encode", {"hex": enc[0].hex_encode(), "error": enc[1], "back": back[0], "back_error": back[1]})
	for h in Vectors.DECODE_CASES:
		var r: Array = Msgpack.decode(unhex(h))
		report("decode", {"hex": h, "value": r[0], "error": r[1]})
	for v in Vectors.EXTRA:
		var raw := unhex(v[2])
		var r: Array = Msgpack.decode(raw)
		var enc: Array = Msgpack.encode(r[0])
		report("extra_vector", {"name": v[0], "type": v[1], "error": r[1], "value": r[0], "reencoded": enc[0].hex_encode()})


## What say(), event(), set_state() and declare() send (their field builders,
## then the message map), for the vectors' ids: checked byte for byte.
func run_built_requests() -> void:
	var give := {
		"name": "give_item",
		"description": "Hand the player an item.",
		"parameters": {
			"type": "object",
			"properties": {
				"item": {"type": "string", "enum": ["ale", "room key"]},
				"count": {"type": "integer", "minimum": 1, "maximum": 3},
				"price": {"type": "number", "minimum": 0.5},
				"paid": {"type": "boolean"},
				"note": {"type": "string", "maxLength": 40, "pattern": "^[a-z ]*$"},
			},
			"required": ["item", "count"],
		},
	}
	var shop := {"name": "open_shop", "description": "Show the wares.", "parameters": {"type": "object", "properties": {}}}
	var fields := {"emotion": {"enum": ["neutral", "warm", "wary"], "description": "Her face."}, "gesture": {"enum": ["none", "nod"], "description": ""}}
	var doc_fields := {"emotion": {"enum": ["neutral", "warm", "wary"], "description": ""}}
	var doc_give := {
		"name": "give_item",
		"description": "Hand the player an item.",
		"parameters": {"type": "object", "properties": {"item": {"type": "string", "enum": ["ale", "room key"]}}, "required": ["item"]},
	}
	var state := {"night": true, "gold": 12, "rep": 0.5, "quest.heron": "done"}
	# options in another order than the protocol's: the builders write the protocol's order
	var say_options := {"state": state, "seed": 3, "session": "save-1", "temperature": 0.7, "max_tokens": 64, "timeout_s": 30.0}
	var built := [
		["say", "r7", "say", ClientScript.say_fields("odile-brask", "Any news from the docks?", {})],
		["event", "e1", "event", ClientScript.event_fields("The player paid Odile ten silver marks.", {"npc": "odile-brask", "session": "save-1"})],
		["state", "s1", "state", ClientScript.state_fields({"quest.heron": "done", "gold": 12}, ["night"], "save-1")],
		["declare", "d1", "declare", ClientScript.declare_fields([doc_give], doc_fields, {"session": "save-1"})],
		["say+state", "r9", "say", ClientScript.say_fields("odile-brask", "A room, please.", say_options)],
		["event+npcs+state", "e2", "event", ClientScript.event_fields("A bell rings.", {"state": {"bell": true, "hour": 23, "temp": -1.25, "weather": "ash"}, "npcs": ["odile-brask", "hale-corrow"], "session": "save-1"})],
		["event+location", "e3", "event", ClientScript.event_fields("A fire in Lowmarket.", {"location": "lowmarket"})],
		["event+faction", "e4", "event", ClientScript.event_fields("The reedcutters call a meeting.", {"faction": "reedcutters", "session": "save-1"})],
		["event+everyone", "e5", "event", ClientScript.event_fields("Night falls.", {})],
		["state+mixed", "s2", "state", ClientScript.state_fields({"hp": 0.75, "alive": false, "deaths": -3, "big": 70000, "name": "Tam"}, ["night", "gold"], "")],
		["state+empty", "s3", "state", ClientScript.state_fields({}, [], "save-1")],
		["declare+npc", "d2", "declare", ClientScript.declare_fields([give, shop], fields, {"max_actions": 2, "npc": "odile-brask", "session": "save-1"})],
		["declare+remove", "d3", "declare", ClientScript.declare_fields([], {}, {"session": "save-1"})],
	]
	for b in built:
		var enc: Array = Msgpack.encode(ClientScript.message(b[1], b[2], b[3]))
		report("built", {"name": b[0], "error": enc[1], "hex": enc[0].hex_encode()})


## A say stream fed to the client as the connection would: chunk, two
## actions, done. Reports the signals in order and the done map.
func run_stream() -> void:
	var c: Node = ClientScript.new()
	c.chunk.connect(_on_vec_chunk)
	c.npc_action.connect(_on_vec_action)
	c.done.connect(_on_vec_done)
	var id: String = c.say("odile-brask", "A room, please.", {"session": "save-1"})  # queued: not connected
	var parts := []
	for v in Vectors.VECTORS:
		if v[0] == "chunk" or v[0] == "action":
			parts.append(unhex(v[1]))
	for v in Vectors.EXTRA:
		if v[0] == "action+mixed" or v[0] == "done+declared":
			parts.append(unhex(v[2]))
	for raw in parts:
		var msg: Dictionary = Msgpack.decode(raw)[0]
		msg["id"] = id
		c.call("_on_message", msg)
	report("stream", {"id": id, "log": vec_log, "pending_left": c.get("_pending").size()})
	c.free()


## The wire cases' error replies (busy with retry_after_ms, unsupported_schema
## without) fed to the client for requests in flight: reports each `error`
## signal with the client's `last_error` map.
func run_errors() -> void:
	var c: Node = ClientScript.new()
	vec_client = c
	c.error.connect(_on_vec_error)
	for v in Vectors.EXTRA:
		if v[0] == "error+busy" or v[0] == "error+unsupported_schema":
			var id: String = c.ping()  # queued: not connected
			var msg: Dictionary = Msgpack.decode(unhex(v[2]))[0]
			msg["id"] = id
			c.call("_on_message", msg)
	report("errors", {"log": vec_log_errors, "pending_left": c.get("_pending").size()})
	c.free()


func _on_vec_error(id: String, code: String, message: String) -> void:
	vec_log_errors.append([id, code, message, vec_client.last_error])


func _on_vec_chunk(id: String, seq: int, text: String) -> void:
	vec_log.append(["chunk", id, seq, text])


func _on_vec_action(id: String, name: String, args: Dictionary) -> void:
	vec_log.append(["npc_action", id, name, args])


func _on_vec_done(id: String, message: Dictionary) -> void:
	vec_log.append(["done", id, message])


func unhex(h: String) -> PackedByteArray:
	var out := PackedByteArray()
	var digits := "0123456789abcdef"
	for i in range(0, h.length(), 2):
		out.append(digits.find(h[i]) * 16 + digits.find(h[i + 1]))
	return out


## JSON text of a decoded value; ints stay ints, floats carry a decimal point,
## byte arrays become {"bin": hex}.
func dump(v) -> String:
	var t := typeof(v)
	if t == TYPE_NIL:
		return "null"
	if t == TYPE_BOOL:
		return "true" if v else "false"
	if t == TYPE_INT:
		return str(v)
	if t == TYPE_FLOAT:  # the exact float64 bits, as hex
		var b := StreamPeerBuffer.new()
		b.big_endian = true
		b.put_double(v)
		return "{\"float64\": \"%s\"}" % b.data_array.hex_encode()
	if t == TYPE_STRING:
		return quote(v)
	if t == TYPE_PACKED_BYTE_ARRAY:
		return "{\"bin\": \"%s\"}" % v.hex_encode()
	if t == TYPE_ARRAY:
		var parts := []
		for x in v:
			parts.append(dump(x))
		return "[" + ", ".join(parts) + "]"  # godot3: return "[" + PoolStringArray(parts).join(", ") + "]"
	if t == TYPE_DICTIONARY:
		var parts := []
		for k in v.keys():
			parts.append(quote(str(k)) + ": " + dump(v[k]))
		return "{" + ", ".join(parts) + "}"  # godot3: return "{" + PoolStringArray(parts).join(", ") + "}"
	return quote("<type %d>" % t)


func quote(s: String) -> String:
	var out := "\""
	for i in s.length():
		var c := s.unicode_at(i)  # godot3: var c := s.ord_at(i)
		if c == 34 or c == 92:
			out += "\\" + s[i]
		elif c < 32:
			out += "\\u%04x" % c
		else:
			out += s[i]
	return out + "\""
