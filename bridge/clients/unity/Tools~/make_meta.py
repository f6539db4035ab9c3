"""Write the Unity .meta files of this package (Unity ignores this Tools~ folder).

A package installed from a git URL is read-only, and Unity ignores any asset in it that has no .meta file, so the
package ships one per file and folder. GUIDs are derived from the path (md5), so re-running changes nothing.
Folders ending in ``~`` (Samples~, Tools~) and dot-files are not imported by Unity and get none.

    python3 bridge/clients/unity/Tools~/make_meta.py          # write missing .meta files
    python3 bridge/clients/unity/Tools~/make_meta.py --check  # exit 1 listing assets without one (used by the tests)
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1]

TAIL = "  externalObjects: {}\n  userData: \n  assetBundleName: \n  assetBundleVariant: \n"
IMPORTERS = {
    ".cs": "MonoImporter:\n  externalObjects: {}\n  serializedVersion: 2\n  defaultReferences: []\n  executionOrder: 0\n"
           "  icon: {instanceID: 0}\n  userData: \n  assetBundleName: \n  assetBundleVariant: \n",
    ".asmdef": "AssemblyDefinitionImporter:\n" + TAIL,
    ".md": "TextScriptImporter:\n" + TAIL,
    ".json": "TextScriptImporter:\n" + TAIL,
}


def assets(root: Path) -> list[Path]:
    out = []
    for p in sorted(root.iterdir()):
        if p.name.startswith(".") or p.name.endswith("~") or p.suffix == ".meta":
            continue
        out.append(p)
        if p.is_dir():
            out.extend(assets(p))
    return out


def meta_text(p: Path) -> str:
    rel = p.relative_to(PACKAGE).as_posix()
    guid = hashlib.md5(f"com.narrative.sidecar/{rel}".encode()).hexdigest()
    if p.is_dir():
        body = "folderAsset: yes\nDefaultImporter:\n" + TAIL
    elif p.name == "package.json":
        body = "PackageManifestImporter:\n" + TAIL
    else:
        body = IMPORTERS.get(p.suffix, "DefaultImporter:\n" + TAIL)
    return f"fileFormatVersion: 2\nguid: {guid}\n{body}"


def main() -> int:
    check = "--check" in sys.argv
    missing = []
    for p in assets(PACKAGE):
        meta = p.with_name(p.name + ".meta")
        if meta.exists():
            continue
        missing.append(meta)
        if not check:
            meta.write_text(meta_text(p))
    if check and missing:
        print("assets without a .meta file:\n" + "\n".join(str(m.relative_to(PACKAGE)) for m in missing))
        return 1
    if not check:
        print(f"wrote {len(missing)} .meta files")
    return 0


if __name__ == "__main__":
    sys.exit(main())
