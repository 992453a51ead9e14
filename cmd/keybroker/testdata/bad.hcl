policies = ["p.hcl"]
