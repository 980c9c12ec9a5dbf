"""Ruifrok & Johnston colour deconvolution (as in skimage.color.rgb2hed): optical density <-> amounts of
haematoxylin (nuclei), eosin and a residual stain."""

import numpy as np

RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], np.float32)
RGB_FROM_HED[2] = np.cross(RGB_FROM_HED[0], RGB_FROM_HED[1])
RGB_FROM_HED /= np.linalg.norm(RGB_FROM_HED, axis=1, keepdims=True)
HED_FROM_RGB = np.linalg.inv(RGB_FROM_HED).astype(np.float32)
