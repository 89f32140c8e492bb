"""Evaluation metrics shared across papers (classification now; PSNR/SSIM and ranking metrics join with their papers)."""
