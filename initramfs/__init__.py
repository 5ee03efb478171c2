"""The ramdisk: the PID-1 program (mounts, udev, mode decision, switch_root) and its builder."""
