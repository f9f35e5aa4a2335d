"""The Discord side of the bot: the only package that imports discord.

``python -m bot`` runs it (see ``bot.__main__``); ``bot.client.ImagineBot`` is the client.
"""
