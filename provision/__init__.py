"""Manufacture: the manufData model, hardware validation and the manufacturing step runner."""
