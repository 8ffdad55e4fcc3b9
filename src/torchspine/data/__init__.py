"""Datasets and transforms: COCO-format detection data (pycocotools), the paper's
augmentation, the built-in synthetic shapes set, annotation checks."""
