"""The signed `.upd` image: format, signing, building, verified reading and extraction.

Layout of a `.upd` file (all of it one valid zstd stream):

    skippable frame (magic 0x184D2A50): b"KILNUPD1" + envelope JSON
        envelope = {"manifest": "<manifest JSON text>", "signatures": [{key_id, ed25519}]}
    zstd frame 0 | zstd frame 1 | ... (independent; each decompresses to `frame_size` bytes,
                                       the last one to the rest)

The manifest lists every frame's offset (from the end of the skippable frame), length and
sha256 of its compressed bytes, so a reader verifies each frame before decompressing it and a
download resumes at any frame boundary. Stock `zstd -dc` skips the envelope and yields the
payload (a tar stream for `rootfs-tar`).
"""
