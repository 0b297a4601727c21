"""tgmae.captions"""
