@tool
extends EditorPlugin
## Editor plugin of the Narrative addon.
##
## The addon's runtime is the NarrativeClient node (narrative_client.gd, a
## class_name: it appears in the Create Node dialog without this plugin). The
## plugin adds a project setting for the sidecar endpoint that the demo scene
## and your own code can read, so a team sets it once per project.

const ENDPOINT_SETTING := "narrative/sidecar/endpoint"
const DEFAULT_ENDPOINT := "tcp://127.0.0.1:5555"


func _enter_tree() -> void:
	if not ProjectSettings.has_setting(ENDPOINT_SETTING):
		ProjectSettings.set_setting(ENDPOINT_SETTING, DEFAULT_ENDPOINT)
	ProjectSettings.set_initial_value(ENDPOINT_SETTING, DEFAULT_ENDPOINT)
	ProjectSettings.add_property_info(
		{"name": ENDPOINT_SETTING, "type": TYPE_STRING, "hint": PROPERTY_HINT_NONE}
	)


func _exit_tree() -> void:
	pass
