"""Names of the tf.Example features written by ImageExampleGen and read everywhere else."""

IMAGE = "image_raw"  # encoded JPEG or PNG bytes, as ingested
LABEL = "label"  # int64 index into the configured class list
LABEL_NAME = "label_name"  # one of the classes, or OUT_OF_SCOPE
CELL_TYPE = "cell_type"  # the image's class folder: label_name, or the cell type of an out-of-scope image
RELPATH = "relpath"  # <data root folder name>/<class>/<file>, e.g. blood-cells-5class/myeloblast/MYO_0001.jpg
SITE = "site"  # acquisition site (hospital, scanner) of the image
SHA256 = "sha256"  # of the original file bytes
HEIGHT = "height"
WIDTH = "width"

OUT_OF_SCOPE = "out_of_scope"  # label_name of a cell that is none of the classes (label: the index after them)
