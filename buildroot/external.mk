# Read by buildroot after all of its own package makefiles.
include $(sort $(wildcard $(BR2_EXTERNAL_KILN_PATH)/package/*/*.mk))
