"""Synthetic captioned images (coloured shapes) and a pixel checker that scores prompt
compliance: the ground for training a small model that really generates (issue 6) and
for measuring whether ANSWER raises prompt adherence over CFG."""
