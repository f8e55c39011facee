"""What the simulated ODM engine "produces": console lines, images.json and result files.

The lines are our own plausible imitation of an ODM run over the task's images (stages, feature
extraction, matching, reconstruction) so that progress and output can advance during a run. The
result files mirror the layout NodeODM zips (orthophoto, DEMs, tiles, point cloud, report), with
filler content from :mod:`zipgen`. Pure: no I/O.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Sequence
from typing import Any

from .jsvalues import dumps
from .zipgen import Member, overhead

ORTHOPHOTO = "odm_orthophoto/odm_orthophoto.tif"
_STAGES = (
    "dataset",
    "split",
    "merge",
    "opensfm",
    "openmvs",
    "odm_filterpoints",
    "odm_meshing",
    "mvs_texturing",
    "odm_georeferencing",
    "odm_dem",
    "odm_orthophoto",
    "odm_report",
    "odm_postprocess",
)


def _tiles() -> list[tuple[int, int, int]]:
    return [(18, 41000 + x, 100000 + y) for x in range(2) for y in range(2)]


def _binary_files() -> list[tuple[str, int]]:
    """(name, filler size) of the binary results: about 1 MB with the text files."""
    files = [
        (ORTHOPHOTO, 180_000),
        ("odm_orthophoto/odm_orthophoto.png", 60_000),
        ("odm_dem/dsm.tif", 150_000),
        ("odm_dem/dtm.tif", 150_000),
        ("odm_georeferencing/odm_georeferenced_model.laz", 250_000),
        ("odm_texturing/odm_textured_model_geo.png", 90_000),
        ("odm_report/report.pdf", 80_000),
    ]
    for folder, size in (("orthophoto_tiles", 6_000), ("dsm_tiles", 4_000), ("dtm_tiles", 4_000)):
        files += [(f"{folder}/{z}/{x}/{y}.png", size) for z, x, y in _tiles()]
    return files


def output_script(uuid: str, images: Sequence[str]) -> list[str]:
    """The console lines of one simulated run, in order."""
    names = list(images) or ["image.jpg"]
    lines = [
        "[INFO]    Initializing ODM (simulated) - running on a NodeODM-compatible test node",
        "[INFO]    ==============",
        f"[INFO]    project_path: /var/www/data/{uuid}",
        "[INFO]    ==============",
        "[INFO]    Running dataset stage",
        f"[INFO]    Loading dataset from: /var/www/data/{uuid}/images",
        f"[INFO]    Loading {len(names)} images",
        *(f"[INFO]    Reading EXIF of {name}" for name in names),
        f"[INFO]    Found {len(names)} usable images",
        "[INFO]    Finished dataset stage",
    ]
    for stage in _STAGES[1:]:
        lines.append(f"[INFO]    Running {stage} stage")
        if stage == "opensfm":
            lines += [f"INFO: Extracting ROOT_SIFT features for image {n}" for n in names]
            pairs = list(itertools.pairwise(names))
            lines += [f"INFO: Matching {a} - {b}: 1 candidate matches" for a, b in pairs]
            lines += [
                f"INFO: Reconstruction 0: {len(names)} images, {1200 * len(names)} points",
                "INFO: Undistorting reconstruction",
            ]
        elif stage in ("odm_dem", "odm_orthophoto"):
            lines += [f"[INFO]    Creating {stage.removeprefix('odm_')} tiles", "[INFO]    Done"]
        lines.append(f"[INFO]    Finished {stage} stage")
    lines += [
        "[INFO]    No more stages to run",
        "[INFO]    MMMMMMMMMMMMMMMMMMMMMMMMMMMMMMMMMMMMMMMMMMMMMMMMMMMMMMMMMMMMM",
        "[INFO]    ODM app finished (simulated)",
        "Postprocessing: done (simulated)",
    ]
    return lines


def images_json(images: Sequence[str]) -> list[dict[str, Any]]:
    """Per-image metadata as ODM writes to images.json (and NodeODM sends in webhooks)."""
    return [
        {
            "filename": name,
            "mask": None,
            "width": 4000,
            "height": 3000,
            "camera_make": "SimCam",
            "camera_model": "SC-1",
            "orientation": 1,
            "latitude": 46.8427 + 0.0001 * i,
            "longitude": -91.994 + 0.0001 * i,
            "altitude": 198.5,
            "band_name": "RGB",
        }
        for i, name in enumerate(images)
    ]


def _text_members(output: Sequence[str], images: Sequence[str]) -> list[Member]:
    tiles = '<?xml version="1.0"?>\n<TileMap version="1.0.0"><Title>simulated</Title></TileMap>\n'
    return [
        Member("odm_orthophoto/odm_orthophoto.tfw", b"0.05\n0\n0\n-0.05\n576000.0\n5188000.0\n"),
        Member("orthophoto_tiles/tilemapresource.xml", tiles.encode()),
        Member("images.json", json.dumps(images_json(images), indent=2).encode()),
        Member("cameras.json", dumps({"v2 simcam sc-1 4000 3000 brown 0.85": {}}).encode()),
        Member("log.json", dumps({"odmVersion": "simulated", "stages": list(_STAGES)}).encode()),
        Member("odm_report/shots.geojson", b'{"type":"FeatureCollection","features":[]}'),
        Member("task_output.txt", "\n".join(output).encode()),
    ]


def _selected(members: list[Member], outputs: Sequence[str] | None) -> list[Member]:
    if outputs is None:
        return members
    # NodeODM strips leading ".." so outputs stay inside the project folder.
    wanted = [re.sub(r"^(\.\.[/\\]?|/)+", "", path).rstrip("/") for path in outputs]
    return [
        m for m in members if any(m.name == w or m.name.startswith(w + "/") for w in wanted if w)
    ]


def result_members(
    output: Sequence[str],
    images: Sequence[str],
    zip_size: int | None = None,
    outputs: Sequence[str] | None = None,
) -> list[Member]:
    """The members of a task's all.zip; with ``zip_size`` the orthophoto fills it exactly.

    Raises ValueError when ``zip_size`` is too small to hold even the orthophoto entry.
    """
    text = _text_members(output, images)
    binary = [Member(name, size=size) for name, size in _binary_files()]
    members = _selected(text + binary, outputs)
    if zip_size is None:
        return members
    others = [m for m in members if m.name != ORTHOPHOTO]
    used = overhead([*(m.name for m in others), ORTHOPHOTO]) + sum(m.length for m in others)
    if used > zip_size:
        others, used = [], overhead([ORTHOPHOTO])
    if used > zip_size:
        raise ValueError(f"zip size {zip_size} is too small (minimum {used} bytes)")
    return [Member(ORTHOPHOTO, size=zip_size - used), *others]
