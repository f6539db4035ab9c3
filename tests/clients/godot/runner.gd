extends Node
## Test driver for the Godot client, run by tests/clients/test_godot_client.py.
##
## Written in the portable subset (scripts/godot3_port.py) like the addon, and run
## ported under godot3-server. Reads NARRATIVE_MODE ("vectors" or "session"),
## NARRATIVE_ENDPOINT and NARRATIVE_NPC from the environment; prints one event
## per line as "@@ <json>" for the Python side to check; quits with 0, or 1 on
## a failure it sees itself.

const Msgpack = preload("res://addons/narrative/msgpack.gd")
const ClientScript = preload("res://addons/narrative/narrative_client.gd")
const Vectors = preload("res://vectors.gd")
const DEADLINE_MS := 1200000
const LONG_LINE := "Tell me everything about the Long Smoulder, slowly and in detail."

var client: Node = null
var step := 0
var t0_us := 0
var want_id := ""
var idle_until_ms := 0
var cancel_id := ""
var pings_before_idle := 0


func _ready() -> void:
	t0_us = Time.get_ticks_usec()
	if OS.get_environment("NARRATIVE_MODE") == "vectors":
		run_vectors()
		get_tree().quit(0)
		return
	client = ClientScript.new()
	client.endpoint = OS.get_environment("NARRATIVE_ENDPOINT")
	client.client_name = "godot3-test-runner"
	client.request_timeout_s = 600.0  # a first turn on a loaded 2-core CI box can take minutes
	client.chunk.connect(_on_chunk)
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
	if step == 0:
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
	if step == 1:
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
	if step == 4 and code == "unknown_npc":
		step = 13
		want_id = client.say(npc(), "Quick!", {"max_tokens": 8, "timeout_s": 0.05, "session": "godot-timeout"})
	elif step == 13 and code == "timeout":
		step = 5
		want_id = client.say(npc(), LONG_LINE, {"max_tokens": 200, "temperature": 1.0, "session": "godot-cancel"})
	elif (step == 10 or step == 11) and code == "disconnected":
		report("waiting_for_reconnect", {})  # _on_connected goes on
	else:
		fail("unexpected error at step %d: %s" % [step, code])


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
