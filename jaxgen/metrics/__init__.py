"""Evaluation metrics shared across papers: `classification` (masked cross-entropy, confusion), `image` (PSNR, SSIM),
`ranking` (HR@k, NDCG@k, MRR)."""
