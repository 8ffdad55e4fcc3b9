"""Detectors: RetinaNet and Mask R-CNN on torchvision's detection framework with SpineNet parts."""
