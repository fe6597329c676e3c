"""Struct member offsets of the running kernel, read from its BTF (/sys/kernel/btf/vmlinux).

The BPF program is compiled against whatever header tree is at hand, which may belong to another kernel, so it
never reads a kernel struct through those headers: every offset it needs comes from here and is passed in as a
macro. Only the type and string sections are parsed, and only far enough to answer member and enum questions.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

BTF_MAGIC = 0xEB9F

KIND_INT, KIND_PTR, KIND_ARRAY, KIND_STRUCT, KIND_UNION, KIND_ENUM = 1, 2, 3, 4, 5, 6
KIND_FWD, KIND_TYPEDEF, KIND_VOLATILE, KIND_CONST, KIND_RESTRICT = 7, 8, 9, 10, 11
KIND_FUNC, KIND_FUNC_PROTO, KIND_VAR, KIND_DATASEC, KIND_FLOAT = 12, 13, 14, 15, 16
KIND_DECL_TAG, KIND_TYPE_TAG, KIND_ENUM64 = 17, 18, 19

# Bytes that follow the common 12-byte header, per kind: (fixed, per vlen item).
_EXTRA = {
    KIND_INT: (4, 0), KIND_ARRAY: (12, 0), KIND_STRUCT: (0, 12), KIND_UNION: (0, 12), KIND_ENUM: (0, 8),
    KIND_FUNC_PROTO: (0, 8), KIND_VAR: (4, 0), KIND_DATASEC: (0, 12), KIND_DECL_TAG: (4, 0),
    KIND_ENUM64: (0, 12),
}
_MODIFIERS = (KIND_TYPEDEF, KIND_VOLATILE, KIND_CONST, KIND_RESTRICT, KIND_TYPE_TAG)


class BTFError(Exception):
    """The kernel's BTF is missing, unreadable, or lacks a member the probe needs."""


@dataclass(frozen=True, slots=True)
class Member:
    name: str
    type_id: int
    bit_offset: int


class KernelBTF:
    """Index of the structs, unions and enums named in a BTF blob."""

    def __init__(self, blob: bytes) -> None:
        if len(blob) < 24:
            raise BTFError("BTF blob too short")
        magic, _version, _flags, hdr_len = struct.unpack_from("<HBBI", blob, 0)
        if magic != BTF_MAGIC:
            raise BTFError("not a BTF blob (bad magic)")
        type_off, type_len, str_off, str_len = struct.unpack_from("<IIII", blob, 8)
        self._types_base = hdr_len + type_off
        self._types_end = self._types_base + type_len
        self._strings = blob[hdr_len + str_off : hdr_len + str_off + str_len]
        self._blob = blob
        # type id -> (kind, name_off, vlen, size_or_type, offset of the kind-specific data)
        self._types: list[tuple[int, int, int, int, int]] = [(0, 0, 0, 0, 0)]
        self._by_name: dict[tuple[int, str], int] = {}
        self._index()

    @classmethod
    def from_file(cls, path: Path = Path("/sys/kernel/btf/vmlinux")) -> KernelBTF:
        try:
            return cls(path.read_bytes())
        except OSError as exc:
            raise BTFError(f"cannot read kernel BTF at {path}: {exc.strerror}") from exc

    def _name(self, off: int) -> str:
        end = self._strings.index(b"\0", off)
        return self._strings[off:end].decode()

    def _index(self) -> None:
        blob, pos, end = self._blob, self._types_base, self._types_end
        unpack = struct.unpack_from
        named_kinds = (KIND_STRUCT, KIND_UNION, KIND_ENUM, KIND_ENUM64)
        while pos < end:
            name_off, info, size_or_type = unpack("<III", blob, pos)
            kind = (info >> 24) & 0x1F
            vlen = info & 0xFFFF
            data = pos + 12
            fixed, per_item = _EXTRA.get(kind, (0, 0))
            self._types.append((kind, name_off, vlen, size_or_type, data | ((info >> 31) << 40)))
            if kind in named_kinds and name_off:
                self._by_name.setdefault((kind, self._name(name_off)), len(self._types) - 1)
            pos = data + fixed + per_item * vlen

    def _entry(self, type_id: int) -> tuple[int, int, int, int, int, bool]:
        kind, name_off, vlen, size_or_type, packed = self._types[type_id]
        return kind, name_off, vlen, size_or_type, packed & ((1 << 40) - 1), bool(packed >> 40)

    def resolve(self, type_id: int) -> int:
        """Follows typedefs and qualifiers to the underlying type."""
        while True:
            kind, _n, _v, target, _d, _k = self._entry(type_id)
            if kind not in _MODIFIERS:
                return type_id
            type_id = target

    def struct_id(self, name: str) -> int:
        for kind in (KIND_STRUCT, KIND_UNION):
            type_id = self._by_name.get((kind, name))
            if type_id is not None:
                return type_id
        raise BTFError(f"struct {name} not found in kernel BTF")

    def members(self, type_id: int) -> list[Member]:
        kind, _name_off, vlen, _size, data, kflag = self._entry(self.resolve(type_id))
        if kind not in (KIND_STRUCT, KIND_UNION):
            raise BTFError(f"type {type_id} is not a struct or union")
        out = []
        for i in range(vlen):
            name_off, member_type, offset = struct.unpack_from("<III", self._blob, data + 12 * i)
            bit_offset = offset & 0xFFFFFF if kflag else offset
            out.append(Member(self._name(name_off) if name_off else "", member_type, bit_offset))
        return out

    def size(self, type_id: int) -> int:
        kind, _n, _v, size_or_type, data, _k = self._entry(self.resolve(type_id))
        if kind == KIND_PTR:
            return 8
        if kind == KIND_ARRAY:
            elem_type, _index_type, nelems = struct.unpack_from("<III", self._blob, data)
            return self.size(elem_type) * nelems
        return size_or_type

    def _find(self, type_id: int, name: str) -> tuple[int, int] | None:
        """(bit offset, type id) of a member, searching anonymous structs and unions too."""
        for member in self.members(type_id):
            if member.name == name:
                return member.bit_offset, member.type_id
            if not member.name:
                kind = self._entry(self.resolve(member.type_id))[0]
                if kind in (KIND_STRUCT, KIND_UNION):
                    inner = self._find(member.type_id, name)
                    if inner is not None:
                        return member.bit_offset + inner[0], inner[1]
        return None

    def offset(self, struct_name: str, path: str) -> int:
        """Byte offset of a member path such as "signal" or "ns.inum" inside struct_name."""
        type_id = self.struct_id(struct_name)
        total_bits = 0
        for part in path.split("."):
            found = self._find(type_id, part)
            if found is None:
                raise BTFError(f"struct {struct_name} has no member {path}")
            bits, type_id = found
            total_bits += bits
        if total_bits % 8:
            raise BTFError(f"{struct_name}.{path} is a bitfield")
        return total_bits // 8

    def enum_value(self, enum_name: str, constant: str) -> int:
        type_id = self._by_name.get((KIND_ENUM, enum_name))
        if type_id is None:
            raise BTFError(f"enum {enum_name} not found in kernel BTF")
        _kind, _n, vlen, _s, data, _k = self._entry(type_id)
        for i in range(vlen):
            name_off, value = struct.unpack_from("<Ii", self._blob, data + 8 * i)
            if self._name(name_off) == constant:
                return value
        raise BTFError(f"enum {enum_name} has no {constant}")
