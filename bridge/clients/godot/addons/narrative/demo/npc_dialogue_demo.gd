extends Control
## Demo: type a line and press Enter; the NPC's answer streams into the
## RichTextLabel chunk by chunk, as the sidecar generates it.
##
## Start a sidecar first (`narrative serve`; it prints the endpoint), then run
## this scene. The endpoint comes from the project setting
## narrative/sidecar/endpoint (set by the plugin) unless `endpoint` is set here.

@export var npc := "odile-brask"
@export var endpoint := ""
@export var max_tokens := 96

var _current := ""

@onready var client: NarrativeClient = $NarrativeClient
@onready var line: RichTextLabel = $Margin/VBox/Line
@onready var input: LineEdit = $Margin/VBox/Input
@onready var status: Label = $Margin/VBox/Status


func _ready() -> void:
	if endpoint == "":
		endpoint = ProjectSettings.get_setting("narrative/sidecar/endpoint", "tcp://127.0.0.1:5555")
	client.endpoint = endpoint
	client.chunk.connect(_on_chunk)
	client.done.connect(_on_done)
	client.error.connect(_on_error)
	client.connected.connect(_on_connected)
	client.disconnected.connect(_on_disconnected)
	input.text_submitted.connect(_on_submitted)
	status.text = "connecting to %s ..." % endpoint
	client.open()


func _on_connected() -> void:
	status.text = "connected: %s (NPCs: %s)" % [
		client.server_info.get("server", "?"), ", ".join(client.server_info.get("npcs", []))
	]


func _on_disconnected(reason: String) -> void:
	status.text = "disconnected (%s); reconnecting ..." % reason


func _on_submitted(text: String) -> void:
	if text.strip_edges() == "":
		return
	if _current != "":
		client.cancel(_current)
	input.clear()
	line.append_text("\n[b]You:[/b] %s\n[b]%s:[/b] " % [text, npc])
	_current = client.say(npc, text, {"max_tokens": max_tokens})


func _on_chunk(id: String, _seq: int, text: String) -> void:
	if id == _current:
		line.add_text(text)


func _on_done(id: String, message: Dictionary) -> void:
	if id != _current:
		return
	_current = ""
	var timings: Dictionary = message.get("timings", {})
	status.text = "%s; first token after %.0f ms, %.1f tokens/s" % [
		message.get("finish_reason", "?"), timings.get("ttft_ms", 0.0), timings.get("tokens_per_s", 0.0)
	]


func _on_error(id: String, code: String, message: String) -> void:
	if id == _current:
		_current = ""
	line.append_text("\n[color=red][%s] %s[/color]\n" % [code, message])
