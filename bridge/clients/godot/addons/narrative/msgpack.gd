extends RefCounted
## MessagePack codec for the sidecar's wire protocol (bridge/PROTOCOL.md).
##
## Implements the subset of the msgpack spec the protocol uses
## (https://github.com/msgpack/msgpack/blob/master/spec.md): nil, bool, every
## int width (positive/negative fixint, uint8..64, int8..64), float32/float64,
## str (fixstr, str8/16/32), bin (bin8/16/32), array (fixarray, array16/32)
## and map (fixmap, map16/32). Extension types are refused (the protocol has
## none). Both entry points return [value, error]; error is "" on success.
##
## Encoding picks the smallest format, like msgpack-python's packb (the
## sidecar's encoder), so a decoded message re-encodes byte for byte:
## dictionaries keep their insertion order in GDScript. Floats are always
## written as float64 (the protocol's rule). Decoding never trusts a length:
## truncated or malformed input gives an error, never a crash. A uint64 above
## 2^63-1 has no GDScript int and wraps to a negative int.
##
## Wire layer: written in the GDScript subset that scripts/godot3_port.py
## ports to Godot 3 (see bridge/clients/godot/README.md).

const MAX_DEPTH := 64


## Encodes `value` (null, bool, int, float, String, PackedByteArray, Array,
## Dictionary). Returns [PackedByteArray, error].
static func encode(value) -> Array:
	var out := StreamPeerBuffer.new()
	out.big_endian = true
	var err := _write_value(out, value, 0)
	if err != "":
		return [PackedByteArray(), err]
	return [out.data_array, ""]


## Decodes one msgpack object that spans all of `bytes`. Returns [value, error];
## error is "truncated", "trailing bytes", "bad type byte 0x.." and the like.
static func decode(bytes: PackedByteArray) -> Array:
	var inp := StreamPeerBuffer.new()
	inp.big_endian = true
	inp.data_array = bytes
	var r := _read_value(inp, 0)
	if r[1] == "" and inp.get_position() != bytes.size():
		return [null, "trailing bytes"]
	return r


static func _write_value(out: StreamPeerBuffer, value, depth: int) -> String:
	if depth > MAX_DEPTH:
		return "nested deeper than %d" % MAX_DEPTH
	var t := typeof(value)
	if t == TYPE_NIL:
		out.put_u8(0xc0)
	elif t == TYPE_BOOL:
		out.put_u8(0xc3 if value else 0xc2)
	elif t == TYPE_INT:
		_put_int(out, value)
	elif t == TYPE_FLOAT:
		out.put_u8(0xcb)
		out.put_double(value)
	elif t == TYPE_STRING or t == TYPE_STRING_NAME:  # godot3: elif t == TYPE_STRING:
		_put_str(out, str(value).to_utf8_buffer())
	elif t == TYPE_PACKED_BYTE_ARRAY:
		_put_bin(out, value)
	elif t == TYPE_ARRAY or t == TYPE_PACKED_STRING_ARRAY:
		var n: int = value.size()
		if n < 16:
			out.put_u8(0x90 | n)
		elif n < 0x10000:
			out.put_u8(0xdc)
			out.put_u16(n)
		else:
			out.put_u8(0xdd)
			out.put_u32(n)
		for item in value:
			var err := _write_value(out, item, depth + 1)
			if err != "":
				return err
	elif t == TYPE_DICTIONARY:
		var n: int = value.size()
		if n < 16:
			out.put_u8(0x80 | n)
		elif n < 0x10000:
			out.put_u8(0xde)
			out.put_u16(n)
		else:
			out.put_u8(0xdf)
			out.put_u32(n)
		for key in value.keys():
			var err := _write_value(out, key, depth + 1)
			if err == "":
				err = _write_value(out, value[key], depth + 1)
			if err != "":
				return err
	else:
		return "cannot encode a value of Variant type %d" % t
	return ""


static func _put_int(out: StreamPeerBuffer, n: int) -> void:
	if n >= 0:
		if n < 0x80:
			out.put_u8(n)
		elif n < 0x100:
			out.put_u8(0xcc)
			out.put_u8(n)
		elif n < 0x10000:
			out.put_u8(0xcd)
			out.put_u16(n)
		elif n < 0x100000000:
			out.put_u8(0xce)
			out.put_u32(n)
		else:
			out.put_u8(0xcf)
			out.put_u64(n)
	elif n >= -32:
		out.put_u8(n & 0xff)  # negative fixint 0xe0..0xff
	elif n >= -0x80:
		out.put_u8(0xd0)
		out.put_8(n)
	elif n >= -0x8000:
		out.put_u8(0xd1)
		out.put_16(n)
	elif n >= -0x80000000:
		out.put_u8(0xd2)
		out.put_32(n)
	else:
		out.put_u8(0xd3)
		out.put_64(n)


static func _put_str(out: StreamPeerBuffer, raw: PackedByteArray) -> void:
	var n := raw.size()
	if n < 32:
		out.put_u8(0xa0 | n)
	elif n < 0x100:
		out.put_u8(0xd9)
		out.put_u8(n)
	elif n < 0x10000:
		out.put_u8(0xda)
		out.put_u16(n)
	else:
		out.put_u8(0xdb)
		out.put_u32(n)
	if n > 0:
		out.put_data(raw)


static func _put_bin(out: StreamPeerBuffer, raw: PackedByteArray) -> void:
	var n := raw.size()
	if n < 0x100:
		out.put_u8(0xc4)
		out.put_u8(n)
	elif n < 0x10000:
		out.put_u8(0xc5)
		out.put_u16(n)
	else:
		out.put_u8(0xc6)
		out.put_u32(n)
	if n > 0:
		out.put_data(raw)


static func _left(inp: StreamPeerBuffer) -> int:
	return inp.get_size() - inp.get_position()


static func _read_value(inp: StreamPeerBuffer, depth: int) -> Array:
	if depth > MAX_DEPTH:
		return [null, "nested deeper than %d" % MAX_DEPTH]
	if _left(inp) < 1:
		return [null, "truncated"]
	var b := inp.get_u8()
	if b < 0x80:
		return [b, ""]
	if b >= 0xe0:
		return [b - 0x100, ""]
	if b >= 0xa0 and b <= 0xbf:
		return _get_str(inp, b & 0x1f)
	if b >= 0x90 and b <= 0x9f:
		return _get_array(inp, b & 0x0f, depth)
	if b >= 0x80 and b <= 0x8f:
		return _get_map(inp, b & 0x0f, depth)
	if b == 0xc0:
		return [null, ""]
	if b == 0xc2:
		return [false, ""]
	if b == 0xc3:
		return [true, ""]
	# every other format has a fixed-size head after the type byte
	var head := _head_size(b)
	if head < 0:
		return [null, "bad type byte 0x%02x" % b]
	if _left(inp) < head:
		return [null, "truncated"]
	match b:
		0xca:
			return [inp.get_float(), ""]
		0xcb:
			return [inp.get_double(), ""]
		0xcc:
			return [inp.get_u8(), ""]
		0xcd:
			return [inp.get_u16(), ""]
		0xce:
			return [inp.get_u32(), ""]
		0xcf:
			return [inp.get_u64(), ""]
		0xd0:
			return [inp.get_8(), ""]
		0xd1:
			return [inp.get_16(), ""]
		0xd2:
			return [inp.get_32(), ""]
		0xd3:
			return [inp.get_64(), ""]
		0xd9:
			return _get_str(inp, inp.get_u8())
		0xda:
			return _get_str(inp, inp.get_u16())
		0xdb:
			return _get_str(inp, inp.get_u32())
		0xc4:
			return _get_raw(inp, inp.get_u8())
		0xc5:
			return _get_raw(inp, inp.get_u16())
		0xc6:
			return _get_raw(inp, inp.get_u32())
		0xdc:
			return _get_array(inp, inp.get_u16(), depth)
		0xdd:
			return _get_array(inp, inp.get_u32(), depth)
		0xde:
			return _get_map(inp, inp.get_u16(), depth)
		0xdf:
			return _get_map(inp, inp.get_u32(), depth)
	return [null, "bad type byte 0x%02x" % b]


## Bytes after the type byte that give the value or the length; -1: not a
## format the protocol uses (0xc1 never used, 0xc7..0xc9 and 0xd4..0xd8 ext).
static func _head_size(b: int) -> int:
	match b:
		0xcc, 0xd0, 0xd9, 0xc4:
			return 1
		0xcd, 0xd1, 0xda, 0xc5, 0xdc, 0xde:
			return 2
		0xca, 0xce, 0xd2, 0xdb, 0xc6, 0xdd, 0xdf:
			return 4
		0xcb, 0xcf, 0xd3:
			return 8
	return -1


static func _get_raw(inp: StreamPeerBuffer, n: int) -> Array:
	if n == 0:
		return [PackedByteArray(), ""]
	if _left(inp) < n:
		return [null, "truncated"]
	var r: Array = inp.get_data(n)
	if r[0] != OK:
		return [null, "truncated"]
	return [r[1], ""]


static func _get_str(inp: StreamPeerBuffer, n: int) -> Array:
	var r := _get_raw(inp, n)
	if r[1] != "":
		return r
	var raw: PackedByteArray = r[0]
	return [raw.get_string_from_utf8(), ""]


static func _get_array(inp: StreamPeerBuffer, n: int, depth: int) -> Array:
	if n > _left(inp):  # every element takes at least one byte
		return [null, "truncated"]
	var out := []
	for i in n:
		var r := _read_value(inp, depth + 1)
		if r[1] != "":
			return r
		out.append(r[0])
	return [out, ""]


static func _get_map(inp: StreamPeerBuffer, n: int, depth: int) -> Array:
	if n * 2 > _left(inp):
		return [null, "truncated"]
	var out := {}
	for i in n:
		var k := _read_value(inp, depth + 1)
		if k[1] != "":
			return k
		var v := _read_value(inp, depth + 1)
		if v[1] != "":
			return v
		out[k[0]] = v[0]
	return [out, ""]
