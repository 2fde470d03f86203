"""The detector: the fitted forest (``forest``), its compiled walk (``kernel``) and the
versioned bundle it is saved in (``bundle``)."""
