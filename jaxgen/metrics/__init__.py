"""Evaluation metrics shared across papers: `classification` (masked cross-entropy, confusion), `image` (PSNR, SSIM),
`frechet` (the Fréchet distance of FID and FD-classifier),
`ranking` (HR@k, NDCG@k, MRR)."""
