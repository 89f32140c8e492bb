"""Evaluation metrics shared across papers: `classification` (masked cross-entropy, confusion), `image` (PSNR, SSIM),
`frechet` (the Fréchet distance of FID and FD-classifier), `inception` (FID's Inception-v3), `lpips` (LPIPS, VGG16 or
AlexNet), `ranking` (HR@k, NDCG@k, MRR)."""
