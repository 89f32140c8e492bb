"""Layers used by two or more papers; `attention` dispatches to dense / cuDNN / block-sparse / SVG backends by name;
`classifiers` holds the small MLP/CNN image classifiers."""
