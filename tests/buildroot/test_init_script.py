"""/init has one text (initramfs.staging.init_script); post-build.sh writes it through
`python -m initramfs.buildroot init-script`, the Debian builder through staging."""

from __future__ import annotations

import pytest

from initramfs import staging
from initramfs.buildroot import main


def test_the_debian_init_is_the_shared_text_for_python3_11() -> None:
    assert staging.init_script("/usr/bin/python3.11") == staging.INIT_SCRIPT
    assert staging.INIT_SCRIPT == (
        "#!/usr/bin/python3.11 -I\nfrom initramfs.init import main\n\nmain()\n")


def test_the_buildroot_init_differs_only_in_its_interpreter(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["init-script", "/usr/bin/python3"]) == 0
    text = capsys.readouterr().out
    assert text.splitlines()[0] == "#!/usr/bin/python3 -I"
    assert text.splitlines()[1:] == staging.INIT_SCRIPT.splitlines()[1:]
