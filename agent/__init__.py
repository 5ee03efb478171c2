"""The update agent: runs in the appliance's OS and takes updates over hawkBit's DDI."""
