"""firmware_config"""
