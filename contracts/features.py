"""Names of the tf.Example features written by ImageExampleGen and read everywhere else."""

IMAGE = "image_raw"  # encoded JPEG or PNG bytes, as ingested
LABEL = "label"  # int64 index into the configured class list
LABEL_NAME = "label_name"
RELPATH = "relpath"  # <data root folder name>/<class>/<file>, e.g. blood-cells-5class/myeloblast/MYO_0001.jpg
SITE = "site"  # acquisition site (hospital, scanner) of the image
SHA256 = "sha256"  # of the original file bytes
HEIGHT = "height"
WIDTH = "width"
