################################################################################
#
# kiln
#
################################################################################

# The appliance-side packages of this very checkout (the directory above this external
# tree), installed as a wheel with their `kiln` command, like the Debian builder does.
KILN_VERSION = 0.1.0
KILN_SITE = $(BR2_EXTERNAL_KILN_PATH)/..
KILN_SITE_METHOD = local
KILN_LICENSE = Apache-2.0
KILN_SETUP_TYPE = pep517
KILN_DEPENDENCIES = host-python-setuptools
# The rsync into the build directory takes sources only: no virtualenv, caches, tests or
# build products (and no output directory, should O= point inside the checkout).
KILN_OVERRIDE_SRCDIR_RSYNC_EXCLUSIONS = \
	--exclude=/.venv --exclude=/bench --exclude=/tests --exclude=/buildroot \
	--exclude=/build --exclude=/dist --exclude=/out --exclude=/output \
	--exclude='*.egg-info' --exclude=__pycache__ --exclude=.mypy_cache \
	--exclude=.ruff_cache --exclude=.pytest_cache

# Build the wheel from a pyproject.toml that keeps only kiln_packages (initramfs/contents.py)
# and their entry points: the server and the QEMU lab never reach the ramdisk. Regenerated
# from the checkout's own pyproject.toml before every build, so `kiln-rebuild` stays right.
define KILN_APPLIANCE_PYPROJECT
	cd $(@D) && PYTHONPATH=$(@D) $(HOST_DIR)/bin/python3 -m initramfs.buildroot \
		pyproject $(KILN_SITE)/pyproject.toml > $(@D)/pyproject.toml.appliance
	mv $(@D)/pyproject.toml.appliance $(@D)/pyproject.toml
endef
KILN_PRE_BUILD_HOOKS += KILN_APPLIANCE_PYPROJECT

# Fail when make starts, not hours later in post-build.sh: the ramdisk must trust a key.
ifeq ($(BR_BUILDING)$(BR2_PACKAGE_KILN),yy)
ifeq ($(call qstrip,$(BR2_PACKAGE_KILN_TRUSTED_KEYS_DIR)),)
$(error BR2_PACKAGE_KILN_TRUSTED_KEYS_DIR is empty: name the directory of the image-signing public keys the appliance trusts (see buildroot/README.md))
endif
endif

$(eval $(python-package))
