"""The proxy's settings, and kube-proxy's KubeProxyConfiguration file read into them."""
