"""Files past the inline limit travel by reference through shared storage, verified."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from runner.broker import connect
from runner.client import Client, save_outputs
from runner.testing import running_worker

PHOTO = Path(__file__).parent.parent / "fixtures" / "images" / "rocket.jpg"


@pytest.fixture
def shared_setup(amqp_url, plugins, settings_factory, route, tmp_path):
    share = tmp_path / "share"
    share.mkdir()
    share.chmod(0o755)
    settings = settings_factory(route, shared_storage=str(share), inline_limit=4096)
    client = Client(connect(amqp_url), plugins, settings)
    yield share, settings, client
    client.close()


def test_a_large_input_goes_by_reference_and_is_cleaned_up(shared_setup, plugins, route, tmp_path):
    share, settings, client = shared_setup
    with running_worker(settings, plugins):
        handle = client.submit("resize", {"size": "64x64"}, files={"image": str(PHOTO)}, route=route, wait=True)
        # The message carried a reference, not the 150 KB photo
        assert (share / handle.id / "in" / "rocket.jpg").read_bytes() == PHOTO.read_bytes()
        result = handle.wait(60)
    [out] = save_outputs(result, tmp_path / "out", client.shared_root)
    with Image.open(out) as img:
        assert max(img.size) == 64


def test_a_large_output_comes_back_by_reference(shared_setup, plugins, route, tmp_path):
    share, settings, client = shared_setup
    with running_worker(settings, plugins):
        result = client.submit("bigoutput", {"size": 100_000}, route=route, wait=True).wait(60)
    [item] = result.outputs
    assert item.ref == f"{result.id}/out/big.bin" and item.size == 100_000 and item.data == b""
    [path] = save_outputs(result, tmp_path / "out", client.shared_root)
    assert path.read_bytes() == b"\0" * 100_000
    assert not (share / result.id).exists()  # consumed, so removed from the share


def test_an_input_changed_on_the_share_is_refused(shared_setup, plugins, route, amqp_url, tmp_path):
    share, settings, client = shared_setup
    client.broker.declare_queue(settings.queue, settings.effective_bindings)  # workers come later
    handle = client.submit("resize", {"size": "64x64"}, files={"image": str(PHOTO)}, route=route, wait=True)
    (share / handle.id / "in" / "rocket.jpg").write_bytes(b"not the photo that was submitted")
    with running_worker(settings, plugins):
        result = handle.wait(60, raise_on_failure=False)
    assert not result.ok and "differs from the message" in result.error and result.attempts == 1
    with connect(amqp_url) as broker:
        assert broker.take_dead(handle.id) is not None
