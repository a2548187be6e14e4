"""Networks: segmentation networks (MONAI residual UNet, ENet) and the box tightener's patch classifier."""
