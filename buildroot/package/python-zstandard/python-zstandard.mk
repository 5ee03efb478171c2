################################################################################
#
# python-zstandard
#
################################################################################

PYTHON_ZSTANDARD_VERSION = 0.25.0
PYTHON_ZSTANDARD_SOURCE = zstandard-$(PYTHON_ZSTANDARD_VERSION).tar.gz
PYTHON_ZSTANDARD_SITE = https://files.pythonhosted.org/packages/fd/aa/3e0508d5a5dd96529cdc5a97011299056e14c6505b678fd58938792794b1
PYTHON_ZSTANDARD_LICENSE = BSD-3-Clause, BSD-3-Clause or GPL-2.0 (bundled zstd)
PYTHON_ZSTANDARD_LICENSE_FILES = LICENSE zstd/LICENSE zstd/COPYING
# pyproject.toml with the setuptools backend: built as a wheel by `python -m build -n`,
# which checks the build requirements (setuptools>=77, packaging, and on Python 3.14
# cffi>=2.0.0b) against the host Python without installing them.
PYTHON_ZSTANDARD_SETUP_TYPE = pep517
PYTHON_ZSTANDARD_DEPENDENCIES = host-python-setuptools host-python-packaging host-python-cffi
# Only the C backend: with cffi importable, setup.py would also build the cffi backend
# (a second ~7 MB extension module) that the default import policy never loads.
PYTHON_ZSTANDARD_BUILD_OPTS = -C--build-option=--no-cffi-backend

$(eval $(python-package))
