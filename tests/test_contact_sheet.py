"""``thumbnails photos/*.jpg --then contact-sheet``: the seed's result aggregation, end to end."""

from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path

import pytest
from PIL import Image

from runner.broker import connect
from runner.client import Client
from runner.errors import JobFailed
from runner.plugins import make_plugins
from runner.results.groups import JobSpec
from runner.testing import running_worker, settings_for, unique_route
from runner_media.contact import FAILED, GAP, LABEL_HEIGHT

IMAGES = Path(__file__).resolve().parents[1] / "fixtures" / "images"


@pytest.fixture
def media(tmp_path):
    """A worker and a client with the installed plugins (media included), embedded broker."""
    route = unique_route()
    settings = replace(settings_for(f"sqlite:///{tmp_path / 'broker.sqlite3'}", route),
                       workdir=str(tmp_path / "work"),
                       results={"url": f"sqlite:///{tmp_path / 'results.sqlite3'}"})
    plugins = make_plugins()
    with connect(settings.broker_url) as broker:
        broker.declare_queue(settings.queue, settings.bindings)
    with running_worker(settings, plugins), Client(connect(settings.broker_url), plugins,
                                                   settings) as client:
        yield client, route


def test_thumbnails_then_contact_sheet_lays_out_every_member(media, tmp_path):
    client, route = media
    # Given three photos and a broken "photo"
    photos = [IMAGES / "rocket.jpg", IMAGES / "coffee.jpg", IMAGES / "chelsea.png"]
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    members = [JobSpec("thumbnails", {"sizes": "64x64,200x200"}, {"image": p}, {"route": route})
               for p in [*photos, broken]]
    # When their thumbnails are made and then a contact sheet of them
    handle = client.group(members).then("contact-sheet", {"tile": "120x100", "columns": 2},
                                        route=route)
    sheet = handle.wait(timeout=300)
    # Then one image holds a 2x2 grid: three pictures, one grey tile for the broken input
    assert sheet.value["tiles"] == 4 and sheet.value["failed"] == 1
    assert (sheet.value["columns"], sheet.value["rows"]) == (2, 2)
    (out,) = sheet.outputs
    assert out.name == "contact-sheet.jpg"
    img = Image.open(io.BytesIO(out.data)).convert("RGB")
    cell_w, cell_h = 120 + GAP, 100 + LABEL_HEIGHT + GAP
    assert img.size == (2 * cell_w + GAP, 2 * cell_h + GAP)

    def tile(i: int) -> Image.Image:
        x, y = GAP + (i % 2) * cell_w, GAP + (i // 2) * cell_h
        return img.crop((x, y, x + 120, y + 100))

    for i in range(3):  # a picture: many colours, not the background
        assert len(tile(i).getcolors(100000) or ()) > 50
    grey = tile(3).getcolors()
    assert grey is not None and max(grey)[1] == pytest.approx(FAILED, abs=6)
    # and the sheet is where `runner result` finds it
    assert client.result(handle.callback.id).outputs[0].sha256 == out.sha256


def test_contact_sheet_outside_a_group_is_refused_with_the_reason(media, tmp_path):
    client, route = media
    with pytest.raises(JobFailed, match="runs as a group's callback"):
        client.submit("contact-sheet", {}, route=route, wait=True).wait(timeout=120)
