#!/usr/bin/env bash
# Kiln's post-build step (BR2_ROOTFS_POST_BUILD_SCRIPT): runs after every package is
# installed into the target directory ($1) and before the cpio image is made. It does what
# initramfs/staging.py does for the Debian ramdisk: PID 1's /init, the trusted keys, pruning,
# .pyc. Buildroot sets HOST_DIR, BR2_CONFIG and BR2_EXTERNAL_KILN_PATH.
set -euo pipefail

die() {
	echo "kiln post-build: $*" >&2
	exit 1
}

target=${1:?usage: post-build.sh TARGET_DIR}
for variable in HOST_DIR BR2_CONFIG BR2_EXTERNAL_KILN_PATH; do
	[ -n "${!variable:-}" ] || die "$variable is not set: buildroot runs this script, with BR2_EXTERNAL=<kiln>/buildroot"
done
checkout=$(cd "$BR2_EXTERNAL_KILN_PATH/.." && pwd)
host_python=$HOST_DIR/bin/python3

# PID 1's entry point: the same text as the Debian ramdisk's (initramfs.staging.init_script),
# for buildroot's interpreter. A target /init also stops the cpio step adding its own.
PYTHONPATH=$checkout "$host_python" -m initramfs.buildroot init-script /usr/bin/python3 \
	> "$target/init"
chmod 0755 "$target/init"

# The trusted image-signing public keys, from BR2_PACKAGE_KILN_TRUSTED_KEYS_DIR.
keys_dir=$(sed -n 's/^BR2_PACKAGE_KILN_TRUSTED_KEYS_DIR="\(.*\)"$/\1/p' "$BR2_CONFIG")
[ -n "$keys_dir" ] || die "BR2_PACKAGE_KILN_TRUSTED_KEYS_DIR is empty: name the directory of the trusted image-signing public keys"
[ -d "$keys_dir" ] || die "BR2_PACKAGE_KILN_TRUSTED_KEYS_DIR=$keys_dir is not a directory"
rm -rf "$target/etc/kiln/keys"
install -d -m 0755 "$target/etc/kiln/keys"
count=0
for key in "$keys_dir"/*.pub "$keys_dir"/*.pem; do
	[ -f "$key" ] || continue
	if grep -q "PRIVATE KEY" "$key"; then
		die "$key holds a private key: only public keys go into the ramdisk"
	fi
	install -m 0644 "$key" "$target/etc/kiln/keys/"
	count=$((count + 1))
done
[ "$count" -gt 0 ] || die "no *.pub or *.pem key in $keys_dir: a ramdisk needs at least one trusted key"

# What the ramdisk does not need (initramfs/staging.py: PRUNE), beyond the headers, static
# libraries and documentation that buildroot's target-finalize step already removed.
shopt -s nullglob
pythons=("$target"/usr/lib/python3.*)
[ "${#pythons[@]}" -eq 1 ] || die "expected one usr/lib/python3.* in $target, found ${#pythons[@]}"
python_lib=${pythons[0]}
for stdlib in test idlelib tkinter turtledemo ensurepip lib2to3 distutils pydoc_data \
	unittest/test ctypes/test sqlite3/test; do
	rm -rf "${python_lib:?}/$stdlib"
done
rm -rf "$python_lib"/config-3.* \
	"$target"/usr/share/{doc,man,info,bash-completion,zsh,gdb,lintian} \
	"$target"/{etc,lib,usr/lib}/udev/hwdb.d "$target"/etc/udev/hwdb.bin "$target"/etc/init.d
find "$target" -name '*.a' -type f -delete

# .pyc next to every module, compiled by the host Python of the same version as the
# target's, with unchecked hashes so the bytes do not depend on when files were copied.
version=$("$host_python" -c 'import sys; print("python%d.%d" % sys.version_info[:2])')
[ "$(basename "$python_lib")" = "$version" ] \
	|| die "host $version cannot compile for the target's $(basename "$python_lib")"
find "$python_lib" -name __pycache__ -type d -prune -exec rm -rf {} +
PYTHONHASHSEED=0 "$host_python" -m compileall -q -j0 \
	--invalidation-mode unchecked-hash -s "$target" -p / "$python_lib"
