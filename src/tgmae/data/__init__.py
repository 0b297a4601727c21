"""tgmae.data"""
