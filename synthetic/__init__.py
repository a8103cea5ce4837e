"""Synthetic captioned images (coloured shapes) and a pixel checker that scores prompt
compliance: the ground for training the built-in `tiny` model (train.py) and for
measuring whether ANSWER raises prompt adherence over CFG. Installed as
``answer_trt.synthetic`` (setuptools package-dir); part of the application layer."""
