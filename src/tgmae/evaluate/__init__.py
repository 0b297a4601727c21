"""tgmae.evaluate"""
