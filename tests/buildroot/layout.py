"""CI checks of the external tree's own files, beside the parity check (initramfs/buildroot.py).

Each returns the problems it finds, worded for the person who has to fix them; the tests
run them on the real tree and on broken copies of it. buildroot itself is absent here: the
symbol names come from the reference data in shared/, and Kconfig is parsed by kconfiglib
with a stub standing in for buildroot's own top-level Config.in.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import kconfiglib  # type: ignore[import-untyped]

from initramfs.buildroot import (
    BUILDROOT_VERSION,
    DEFCONFIG,
    BuildrootTreeError,
    read_config,
    read_make_variables,
)

REPO = Path(__file__).resolve().parents[2]
TREE = REPO / "buildroot"
# package/pkg-python.mk's target setup types (shared/buildroot/README.md).
SETUP_TYPES = ("setuptools", "setuptools-rust", "pep517", "flit", "hatch", "maturin", "poetry")
_CONFIG = re.compile(r"^\s*(?:menu)?config\s+([A-Za-z0-9_]+)\s*$", re.MULTILINE)
# What buildroot derives from the defconfig for the symbols our Config.in depends on, so the
# stub can evaluate them: promptless in buildroot, set by another choice there.
BUILDROOT_FACTS = {
    "BR2_PACKAGE_HAS_UDEV": "BR2_PACKAGE_EUDEV",  # eudev selects it
    "BR2_ENABLE_LOCALE": "BR2_TOOLCHAIN_BUILDROOT_GLIBC",  # glibc always has locales
    "BR2_USE_WCHAR": "BR2_TOOLCHAIN_BUILDROOT_GLIBC",
    "BR2_TOOLCHAIN_GCC_AT_LEAST_5": "BR2_TOOLCHAIN_BUILDROOT_GLIBC",  # its GCC is past 5
    "BR2_PACKAGE_HOST_RUSTC_TARGET_ARCH_SUPPORTS": "BR2_x86_64",  # x86_64-unknown-linux-gnu
}


def shared_symbols_file(repo: Path = REPO) -> Path:
    """CI clones the repository with shared/ beside it: `<repo>/../shared/buildroot/`."""
    return repo.parent / "shared" / "buildroot" / f"symbols-{BUILDROOT_VERSION}.txt"


def shared_symbols(path: Path) -> frozenset[str]:
    if not path.is_file():
        raise BuildrootTreeError(
            f"{path} is missing: the buildroot {BUILDROOT_VERSION} reference data must sit in "
            "shared/buildroot/ beside the checkout (CI has it as ../shared/); without it the "
            "defconfig's symbols cannot be checked")
    lines = path.read_text().splitlines()
    return frozenset(line.strip() for line in lines if line.strip() and line[0] != "#")


def config_files(tree: Path) -> list[Path]:
    return [tree / "Config.in", *sorted((tree / "package").glob("*/Config.in"))]


def defined_symbols(tree: Path) -> set[str]:
    return {s for path in config_files(tree) for s in _CONFIG.findall(path.read_text())}


def external_name(tree: Path) -> str:
    match = re.search(r"^name:\s+([A-Za-z0-9_]+)\s*$", (tree / "external.desc").read_text(),
                      re.MULTILINE)
    if match is None:
        raise BuildrootTreeError(f"{tree}/external.desc has no `name: NAME` line")
    return match[1]


def check_symbols(tree: Path, known: frozenset[str]) -> list[str]:
    """Every symbol the defconfig sets is buildroot's, or defined by the tree's Config.in."""
    defined = defined_symbols(tree)
    return [f"{DEFCONFIG}: {symbol} is neither a buildroot {BUILDROOT_VERSION} symbol nor "
            "defined by the external tree's Config.in files"
            for symbol in read_config(tree / DEFCONFIG)
            if symbol not in known and symbol not in defined]


def check_layout(tree: Path) -> list[str]:
    """The files buildroot's br2-external and pkg-python.mk want, each package as it wants."""
    problems = [f"{tree.name}/ has no {name}" for name in ("external.desc", "Config.in",
                                                          "external.mk")
                if not (tree / name).is_file()]
    if problems:
        return problems
    name, top = external_name(tree), (tree / "Config.in").read_text()
    if f"$(BR2_EXTERNAL_{name}_PATH)/package/*/*.mk" not in (tree / "external.mk").read_text():
        problems.append(f"external.mk does not include $(BR2_EXTERNAL_{name}_PATH)/package/*/*.mk")
    for directory in sorted(p for p in (tree / "package").iterdir() if p.is_dir()):
        problems += _check_package(directory, name=name, top=top)
    return problems


def _check_package(directory: Path, *, name: str, top: str) -> list[str]:
    package, upper = directory.name, re.sub(r"[-.]", "_", directory.name.upper())
    where = f"package/{package}"
    config, makefile = directory / "Config.in", directory / f"{package}.mk"
    problems = [f"{where} has no {path.name}" for path in (config, makefile)
                if not path.is_file()]
    if problems:
        return problems
    if f"BR2_PACKAGE_{upper}" not in _CONFIG.findall(config.read_text()):
        problems.append(f"{where}/Config.in does not define BR2_PACKAGE_{upper} (the enable "
                        "symbol buildroot derives from the directory name)")
    if f'source "$BR2_EXTERNAL_{name}_PATH/{where}/Config.in"' not in top:
        problems.append(f"Config.in does not source {where}/Config.in")
    infra = re.findall(r"^\$\(eval \$\(([a-z0-9-]+)\)\)\s*$", makefile.read_text(), re.M)
    if infra != ["python-package"]:
        problems.append(f"{where}/{package}.mk does not end with $(eval $(python-package)) "
                        f"(found {infra or 'no $(eval ...) line'})")
    variables = read_make_variables(makefile)
    required = ["VERSION", "SITE", "LICENSE", "SETUP_TYPE"]
    if variables.get(f"{upper}_SITE_METHOD") != "local":
        required += ["SOURCE", "LICENSE_FILES"]
    problems += [f"{where}/{package}.mk does not set {upper}_{suffix}"
                 for suffix in required if not variables.get(f"{upper}_{suffix}")]
    setup = variables.get(f"{upper}_SETUP_TYPE")
    if setup and setup not in SETUP_TYPES:
        problems.append(f"{upper}_SETUP_TYPE = {setup} is not one of {', '.join(SETUP_TYPES)}")
    source = variables.get(f"{upper}_SOURCE", "").replace(
        f"$({upper}_VERSION)", variables.get(f"{upper}_VERSION", ""))
    hashes = directory / f"{package}.hash"
    for wanted in [source, *variables.get(f"{upper}_LICENSE_FILES", "").split()] if source else []:
        if not hashes.is_file() or wanted not in hashes.read_text().split():
            problems.append(f"{where}/{package}.hash has no hash for {wanted}")
    return problems


def parse_kconfig(tree: Path, work: Path) -> kconfiglib.Kconfig:
    """Parse the tree's Kconfig files under a stub top level: it defines the
    BR2_EXTERNAL_<NAME>_PATH string and each buildroot symbol they use (as a plain prompt,
    or derived per BUILDROOT_FACTS), then sources the tree's Config.in as buildroot does.
    Raises kconfiglib.KconfigError on a syntax error; see `kconf.warnings` for the rest."""
    name = external_name(tree)
    own = defined_symbols(tree) | {f"BR2_EXTERNAL_{name}_PATH"}
    used = {s for path in config_files(tree)
            for s in re.findall(r"\bBR2_[A-Za-z0-9_]+", path.read_text())}
    stub = ['mainmenu "buildroot stub"', f"config BR2_EXTERNAL_{name}_PATH",
            f'\tstring\n\tdefault "{tree}"']
    for symbol in sorted((used | set(BUILDROOT_FACTS.values())) - own - set(BUILDROOT_FACTS)):
        stub.append(f'config {symbol}\n\tbool "{symbol}"')
    for symbol, source in sorted(BUILDROOT_FACTS.items()):
        stub.append(f"config {symbol}\n\tbool\n\tdefault y if {source}")
    stub.append(f'menu "External options"\nsource "$BR2_EXTERNAL_{name}_PATH/Config.in"\nendmenu')
    top = work / "Config.in"
    top.write_text("\n".join(stub) + "\n")
    # kconfiglib reads both from the environment: `source "$VAR/..."` paths, and the prefix of
    # symbols in config files (buildroot's have none; the kernel's say CONFIG_).
    environment = {f"BR2_EXTERNAL_{name}_PATH": str(tree), "CONFIG_": ""}
    saved = {key: os.environ.get(key) for key in environment}
    os.environ.update(environment)
    try:
        return kconfiglib.Kconfig(str(top), warn_to_stderr=False)
    finally:
        for key, value in saved.items():
            if value is None:
                del os.environ[key]
            else:
                os.environ[key] = value


def check_kconfig(tree: Path, work: Path) -> list[str]:
    """The tree parses without warnings, and each of its own symbols the defconfig enables
    stays enabled (Kconfig silently drops a value whose `depends on` is unmet)."""
    kconf = parse_kconfig(tree, work)
    kconf.load_config(str(tree / DEFCONFIG))
    problems = [f"Kconfig: {warning}" for warning in kconf.warnings]
    for symbol, value in read_config(tree / DEFCONFIG).items():
        if symbol in defined_symbols(tree) and value == "y" \
                and kconf.syms[symbol].str_value != "y":
            problems.append(f"{DEFCONFIG} sets {symbol}=y, but Kconfig makes it "
                            f"{kconf.syms[symbol].str_value or 'n'}: a `depends on` is unmet")
    return problems


def edit(path: Path, old: str, new: str) -> None:
    """Replace `old`, which must be there: a test never breaks a rule by accident or not at all."""
    text = path.read_text()
    assert text.count(old) == 1, f"{old!r} is not in {path} exactly once"
    path.write_text(text.replace(old, new))
