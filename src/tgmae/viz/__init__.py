"""tgmae.viz"""
